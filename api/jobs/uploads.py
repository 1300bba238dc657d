"""Resumable uploads (tus 1.0) and `input_upload`: big inputs arrive apart from the submit, survive a dropped
connection, and are then taken by one job.

- Production (Supabase Storage): `authorize` records the upload and answers a token good for one object,
  `<user>/uploads/<id>` in the inputs bucket, at Storage's signed tus endpoint; the bytes never pass through the API.
- Local mode (LocalStorage): the API is the tus server. `create`, `append` (PATCH) and the row's offset (HEAD) speak
  tus 1.0 core with the creation, expiration, checksum and termination extensions against the same object key.
  Written by hand: the ASGI tus servers on PyPI keep their state in sidecar files and read whole files into memory
  (tuspyserver 4.4.3), while uploads here are Postgres rows owned by a user, behind the request guard's limits.
- `take` hands a finished upload to a submit or quote: the same probe, price and limits as a multipart input; the
  job's transaction then `consume`s it, so one upload makes one job (another gets 409 `upload_used`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID, uuid4

from api.errors import Problem
from api.jobs.inputs import ReceivedInput, check_declared_type, safe_filename, too_large
from api.state import AppState
from api.storage import LocalStorage, SupabaseStorage
from db import uploads as db_uploads

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,checksum,termination"
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
SUPABASE_CHUNK_BYTES = 6 * 1024 * 1024  # Storage's resumable part size (supabase.com/docs/guides/storage/uploads)


def _not_found() -> Problem:
    return Problem(404, "upload_not_found", "Upload not found", "No upload with this id belongs to you.")


def _gone() -> Problem:
    return Problem(410, "upload_expired", "Upload expired", "Unused uploads expire; upload the file again.")


def used() -> Problem:
    return Problem(
        409,
        "upload_used",
        "Upload already used",
        "Each upload is the input of one job; upload the file again for another.",
    )


def object_key(user_id: UUID, upload_id: UUID) -> str:
    return f"{user_id}/uploads/{upload_id}"


def _check_size(state: AppState, size: int) -> None:
    if size <= 0:
        raise Problem(422, "empty_file", "Empty upload", "An upload needs at least one byte.")
    if size > state.settings.max_resumable_upload_bytes:
        raise too_large(state.settings.max_resumable_upload_bytes)


async def _insert(
    state: AppState, user_id: UUID, backend: str, filename: str | None, content_type: str | None, size: int
) -> dict[str, Any]:
    _check_size(state, size)
    check_declared_type(content_type)
    if content_type and not content_type.isprintable():
        raise Problem(422, "invalid_request", "Invalid content type", "The content type has control characters.")
    upload_id = uuid4()
    async with state.pool.connection() as conn:
        return await db_uploads.insert_upload(
            conn,
            upload_id=upload_id,
            user_id=user_id,
            backend=backend,
            object_key=object_key(user_id, upload_id),
            filename=safe_filename(filename),
            content_type=content_type or "application/octet-stream",
            size=size,
            expires_at=state.clock() + timedelta(seconds=state.settings.upload_expiry_seconds),
        )


def local_storage(state: AppState) -> LocalStorage:
    storage = state.storage
    if not isinstance(storage, LocalStorage):
        raise Problem(
            409,
            "upload_direct_only",
            "Upload straight to storage",
            "This deployment takes no upload bytes: POST /v1/uploads with a JSON body for a storage authorization.",
        )
    return storage


async def create(
    state: AppState, user_id: UUID, size: int, filename: str | None, content_type: str | None
) -> dict[str, Any]:
    """tus creation on the API itself (local mode): an empty object and its row."""
    storage = local_storage(state)
    row = await _insert(state, user_id, "local", filename, content_type, size)
    path = storage.path_for(state.settings.inputs_bucket, row["object_key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return row


async def authorize(
    state: AppState, user_id: UUID, size: int, filename: str | None, content_type: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The upload's row and, in production, how the client sends its bytes to Supabase Storage (None in local mode,
    where the client sends them to the upload's own URL on this API)."""
    storage = state.storage
    if not isinstance(storage, SupabaseStorage):
        return await create(state, user_id, size, filename, content_type), None
    row = await _insert(state, user_id, "supabase", filename, content_type, size)
    bucket = state.settings.inputs_bucket
    token = await storage.signed_upload_token(bucket, row["object_key"])
    return row, {
        "endpoint": storage.resumable_endpoint,
        "headers": {"x-signature": token, "x-upsert": "true"},
        "metadata": {"bucketName": bucket, "objectName": row["object_key"], "contentType": row["content_type"]},
        "chunk_size": SUPABASE_CHUNK_BYTES,
    }


async def get(state: AppState, user_id: UUID, upload_id: UUID) -> dict[str, Any]:
    """The caller's live upload: 404 for none (or another user's), 410 once expired."""
    async with state.pool.connection() as conn:
        row = await db_uploads.get_upload(conn, upload_id, user_id)
    if row is None:
        raise _not_found()
    if row["state"] == "expired" or (row["state"] in db_uploads.LIVE_STATES and row["expires_at"] <= state.clock()):
        raise _gone()
    return row


async def settled(state: AppState, user_id: UUID, upload_id: UUID) -> dict[str, Any]:
    """The upload once no PATCH is writing it (tus HEAD): a client that lost its connection mid-PATCH asks for the
    offset at once, while the server may still be recording the bytes that request brought; waiting for the writer's
    lock (bounded by the body idle limit, which ends a stalled PATCH) answers the offset it recorded."""
    row = await get(state, user_id, upload_id)
    if row["backend"] != "local" or row["state"] != "uploading":
        return row
    path = local_storage(state).path_for(state.settings.inputs_bucket, row["object_key"])
    deadline = asyncio.get_running_loop().time() + state.settings.body_read_idle_seconds
    with path.open("rb") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if asyncio.get_running_loop().time() >= deadline:
                    break  # answer what is recorded: a PATCH then meets 423 or 409 and the client asks again
                await asyncio.sleep(0.05)
                continue
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            break
    return await get(state, user_id, upload_id)


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` (tus checksum extension)."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm.lower() not in CHECKSUM_ALGORITHMS:
        raise Problem(
            400,
            "checksum_algorithm_unsupported",
            "Unsupported checksum algorithm",
            f"Upload-Checksum takes {', '.join(CHECKSUM_ALGORITHMS)}.",
        )
    try:
        return algorithm.lower(), base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise Problem(400, "bad_request", "Invalid Upload-Checksum", "The digest must be base64.") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """The object open for writing under an exclusive lock: two PATCHes on one upload (two tabs, a client retrying
    before the server saw the first drop) never interleave, across API processes too. 423 when it is held."""
    with path.open("r+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Problem(
                423, "upload_locked", "Upload in progress", "Another request is writing this upload; retry shortly."
            ) from None
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def append(
    state: AppState,
    user_id: UUID,
    upload_id: UUID,
    offset: int,
    body: AsyncIterator[bytes],
    checksum: tuple[str, bytes] | None,
) -> dict[str, Any]:
    """tus PATCH: write the body at `offset` (which must be the upload's offset: 409 otherwise). Bytes that arrived
    are kept even if the connection drops, so HEAD then answers how far it got; with `Upload-Checksum` the chunk is
    kept only whole and matching (460 otherwise). Past the declared length: 413. Returns the row as it now is."""
    storage = local_storage(state)
    row = await get(state, user_id, upload_id)
    if offset != row["upload_offset"]:
        raise Problem(
            409,
            "offset_mismatch",
            "Upload-Offset does not match",
            f"The upload is at {row['upload_offset']} bytes: HEAD it and resume from there.",
            upload_offset=row["upload_offset"],
        )
    if row["state"] != "uploading":
        async for chunk in body:
            if chunk:
                raise too_large(row["size"])
        return row
    remaining = row["size"] - offset
    written = 0
    keep = True
    digest = hashlib.new(checksum[0]) if checksum else None
    path = storage.path_for(state.settings.inputs_bucket, row["object_key"])
    with _locked(path) as handle:
        # Anything past the recorded offset is from a write that died before it was recorded: drop it.
        handle.truncate(offset)
        handle.seek(offset)
        try:
            async for chunk in body:
                if written + len(chunk) > remaining:
                    raise too_large(row["size"])
                handle.write(chunk)
                written += len(chunk)
                if digest is not None:
                    digest.update(chunk)
            if checksum is not None and digest is not None and digest.digest() != checksum[1]:
                keep = False
                raise Problem(
                    460, "checksum_mismatch", "Checksum mismatch", "The chunk did not match its Upload-Checksum."
                )
        except BaseException:
            keep = keep and checksum is None  # a checksummed chunk counts only whole
            raise
        finally:
            if not keep:
                written = 0
                handle.truncate(offset)
            handle.flush()
            await asyncio.shield(_record(state, upload_id, offset, offset + written))
    return await get(state, user_id, upload_id)


async def _record(state: AppState, upload_id: UUID, expected: int, offset: int) -> None:
    # Page cache only, no fsync: a crash loses the tail the row never recorded, and the next PATCH truncates the
    # object back to the recorded offset.
    if offset == expected:
        return
    async with state.pool.connection() as conn:
        await db_uploads.record_offset(conn, upload_id, expected, offset, state.clock())


async def terminate(state: AppState, user_id: UUID, upload_id: UUID) -> None:
    """tus termination: forget an upload no job has taken and delete its bytes."""
    async with state.pool.connection() as conn:
        row = await db_uploads.delete_upload(conn, upload_id, user_id)
    if row is None:
        await get(state, user_id, upload_id)  # 404 / 410 as they apply
        raise used()
    await state.storage.delete(state.settings.inputs_bucket, [row["object_key"]])


async def take(state: AppState, user_id: UUID, upload_id: UUID, workdir: Path) -> ReceivedInput:
    """A finished upload as a job's input, for the probe: the object itself in local mode, a capped download of it in
    production (where the API learns here that the upload is whole). 409 `upload_incomplete` / `upload_used`."""
    row = await get(state, user_id, upload_id)
    if row["state"] == "used":
        raise used()
    incomplete = Problem(
        409,
        "upload_incomplete",
        "Upload not finished",
        f"The upload has {row['upload_offset']} of {row['size']} bytes; resume it (HEAD, then PATCH) first.",
        upload_offset=row["upload_offset"],
        size=row["size"],
    )
    bucket = state.settings.inputs_bucket
    storage = state.storage
    if isinstance(storage, SupabaseStorage):
        workdir.mkdir(mode=0o700, exist_ok=True)
        dest = workdir / f"upload-{upload_id}"
        try:
            size, sha256 = await storage.download_capped(bucket, row["object_key"], dest, row["size"])
        except (FileNotFoundError, ValueError):
            raise incomplete from None
        if size != row["size"]:
            raise incomplete
        if row["state"] == "uploading":
            async with state.pool.connection() as conn:
                await db_uploads.mark_complete(conn, upload_id, size, state.clock())
        path = dest
    else:
        if row["state"] != "complete":
            raise incomplete
        path = local_storage(state).path_for(bucket, row["object_key"])
        sha256 = await asyncio.to_thread(_sha256, path)
    return ReceivedInput(
        path=path, filename=row["filename"], content_type=row["content_type"], bytes=row["size"], sha256=sha256
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def expires_header(expires_at: datetime) -> str:
    """RFC 9110 HTTP-date, as tus's `Upload-Expires` wants."""
    return format_datetime(expires_at.astimezone(UTC), usegmt=True)


def metadata_header(raw: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64value` pairs (tus creation)."""
    pairs: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, _, value = item.strip().partition(" ")
        if not key:
            continue
        try:
            pairs[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value else ""
        except (binascii.Error, UnicodeDecodeError):
            raise Problem(400, "bad_request", "Invalid Upload-Metadata", f"`{key[:50]}` is not base64 UTF-8.") from None
    return pairs
