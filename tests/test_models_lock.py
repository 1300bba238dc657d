"""models.lock parsing and `pull`/`status` against a real HTTP server on 127.0.0.1 that honours Range."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inference.models import (
    ChecksumMismatch,
    DownloadError,
    ModelEntry,
    ModelFile,
    ModelsLock,
    UnknownModel,
    UnverifiableModel,
    load_lock,
    pull,
    sha256_file,
    status,
)
from inference.params import DEMUCS_SOURCES, WHISPER_MODELS

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not all one byte so a wrong offset changes the hash
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD at /good, /corrupt (different bytes), /cut (drops the first connection half-way)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.cut_remaining = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Range")))
                body = PAYLOAD if self.path in ("/good", "/cut") else PAYLOAD[:-1] + b"\x00"
                if self.path == "/missing":
                    self.send_error(404)
                    return
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
def server() -> Iterator[_Server]:
    srv = _Server()
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
    expected |= {"basic-pitch", "deepfilternet3", "stable-audio-open", "audioldm2"}
    assert set(lock.models) == expected
    for entry in lock.models.values():
        assert entry.task in {"separate", "enhance", "transcribe", "midi", "generate"}
        assert entry.source and entry.licence and isinstance(entry.commercial_use, bool)
        if entry.verifiable:
            for f in entry.files:
                assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), entry.key
                assert f.url or (f.package and f.package_path)
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
    with pytest.raises(UnverifiableModel):
        pull(["stable-audio-open"], tmp_path, lock=lock)
    with pytest.raises(UnknownModel):
        pull(["no-such-model"], tmp_path, lock=lock)
    states = {s.key: s.state for s in status(tmp_path, lock, verify=False)}
    assert states["stable-audio-open"] == "unverifiable" and states["whisper/tiny"] == "missing"


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
