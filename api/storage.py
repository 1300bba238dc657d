"""Object storage for job inputs and outputs: a local folder (downloads through HMAC-signed URLs served by `router`)
or Supabase Storage (private buckets, its own signed URLs). Both implement `api.protocols.Storage`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from api.errors import Problem
from api.protocols import Clock, Storage
from api.settings import Settings

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_key(bucket: str, key: str) -> None:
    """Refuse names that could leave the bucket's folder: `..`, absolute paths, backslashes, empty segments."""
    if not _BUCKET.match(bucket):
        raise ValueError(f"invalid bucket name {bucket!r}")
    parts = key.split("/")
    if not key or "\\" in key or "\x00" in key or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object key {key!r}")


class LocalStorage:
    """Files under `root/<bucket>/<key>`; writes are atomic (temp file + rename) so readers never see half a file."""

    def __init__(self, root: Path, signing_key: str, base_url: str, clock: Clock = _utc_now) -> None:
        self.root = Path(root).resolve()
        self._key = signing_key.encode()
        self.base_url = base_url.rstrip("/")
        self.clock = clock

    def path_for(self, bucket: str, key: str) -> Path:
        check_key(bucket, key)
        base = self.root / bucket
        path = (base / key).resolve()
        # Belt and braces against symlinks planted inside the root.
        if not path.is_relative_to(base.resolve()):
            raise ValueError(f"invalid object key {key!r}")
        return path

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> int:
        dest = self.path_for(bucket, key)
        return await asyncio.to_thread(_atomic_copy, Path(path), dest)

    async def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        source = self.path_for(bucket, key)
        if not source.is_file():
            raise FileNotFoundError(f"{bucket}/{key}")
        await asyncio.to_thread(_atomic_copy, source, Path(dest))
        return Path(dest)

    async def delete(self, bucket: str, keys: list[str]) -> None:
        for key in keys:
            self.path_for(bucket, key).unlink(missing_ok=True)

    async def signed_url(self, bucket: str, key: str, expires_in: int, filename: str | None = None) -> str:
        check_key(bucket, key)
        expires = int(self.clock().timestamp()) + int(expires_in)
        query: dict[str, str | int] = {"expires": expires}
        if filename:
            query["filename"] = filename
        query["sig"] = self.signature(bucket, key, expires, filename)
        return f"{self.base_url}/v1/files/{bucket}/{quote(key)}?{urlencode(query)}"

    def signature(self, bucket: str, key: str, expires: int, filename: str | None) -> str:
        # NUL separators: no field can contain one, so no two distinct tuples share a message.
        message = "\x00".join((bucket, key, str(expires), filename or "")).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, bucket: str, key: str, expires: int, filename: str | None, sig: str) -> Path:
        """The file a signed URL grants, or a 403/404 Problem."""
        try:
            path = self.path_for(bucket, key)
        except ValueError:
            raise Problem(403, "bad_signature", "Invalid download link") from None
        if not hmac.compare_digest(self.signature(bucket, key, expires, filename).encode(), sig.encode()):
            raise Problem(403, "bad_signature", "Invalid download link", "The link was altered or is not ours.")
        if self.clock().timestamp() >= expires:
            raise Problem(403, "url_expired", "Download link expired", "Fetch the job again for a fresh link.")
        if not path.is_file():
            raise Problem(404, "not_found", "File not found", "The file was deleted (outputs expire).")
        return path


def _atomic_copy(source: Path, dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest.stat().st_size


class SupabaseStorage:
    """Supabase Storage (private buckets) through supabase-py's async client, as the service role.

    The client holds an httpx connection pool bound to the event loop that created it, so one is made per loop
    (a local worker process keeps one loop; an API process has one).
    """

    def __init__(self, supabase_url: str, service_role_key: str, *, timeout_seconds: int = 120) -> None:
        self._url = supabase_url
        self._service_key = service_role_key
        self._timeout = timeout_seconds
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _bucket(self, bucket: str) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import httpx
            from supabase import AsyncClientOptions, acreate_client

            # Our own httpx client: the timeout that suits large audio files, and none of the deprecated knobs.
            http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True)
            options = AsyncClientOptions(auto_refresh_token=False, persist_session=False, httpx_client=http)
            self._client = await acreate_client(self._url, self._service_key, options=options)
            self._loop = loop
        return self._client.storage.from_(bucket)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> int:
        check_key(bucket, key)
        # upsert: a retried job overwrites its deterministic output keys instead of failing on "already exists".
        await (await self._bucket(bucket)).upload(key, Path(path), {"content-type": content_type, "upsert": "true"})
        return Path(path).stat().st_size

    async def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        from storage3.exceptions import StorageApiError

        check_key(bucket, key)
        try:
            data = await (await self._bucket(bucket)).download(key)
        except StorageApiError as exc:
            if str(exc.status) == "404" or exc.code in ("not_found", "NoSuchKey"):
                raise FileNotFoundError(f"{bucket}/{key}") from exc
            raise
        await asyncio.to_thread(Path(dest).write_bytes, data)
        return Path(dest)

    async def signed_url(self, bucket: str, key: str, expires_in: int, filename: str | None = None) -> str:
        check_key(bucket, key)
        options = {"download": filename} if filename else None
        result = await (await self._bucket(bucket)).create_signed_url(key, int(expires_in), options)
        return str(result["signedURL"])

    async def delete(self, bucket: str, keys: list[str]) -> None:
        if not keys:
            return
        for key in keys:
            check_key(bucket, key)
        await (await self._bucket(bucket)).remove(keys)

    @property
    def resumable_endpoint(self) -> str:
        """Storage's tus endpoint for signed uploads: a request there is authorized by its `x-signature` header (a
        token from `signed_upload_token`) for that one object, instead of a user's JWT (supabase/storage
        src/http/routes/tus/lifecycle.ts: `SIGNED_URL_SUFFIX = '/sign'`, `onIncomingRequest`)."""
        return f"{self._url.rstrip('/')}/storage/v1/upload/resumable/sign"

    async def signed_upload_token(self, bucket: str, key: str) -> str:
        """A token that lets its holder upload `key` and nothing else (storage3 `create_signed_upload_url`)."""
        from storage3.types import CreateSignedUploadUrlOptions

        check_key(bucket, key)
        options = CreateSignedUploadUrlOptions(upsert="true")  # a restarted upload replaces a partial object
        signed = await (await self._bucket(bucket)).create_signed_upload_url(key, options)
        return str(signed["token"])

    async def download_capped(self, bucket: str, key: str, dest: Path, max_bytes: int) -> tuple[int, str]:
        """Stream an object to `dest` (bounded memory), stopping past `max_bytes`: (size, sha256 hex).
        FileNotFoundError when there is no such object; ValueError when it is larger than `max_bytes`."""
        import httpx

        check_key(bucket, key)
        url = f"{self._url.rstrip('/')}/storage/v1/object/{bucket}/{quote(key)}"
        headers = {"Authorization": f"Bearer {self._service_key}", "apikey": self._service_key}
        digest, size = hashlib.sha256(), 0
        async with (
            httpx.AsyncClient(timeout=self._timeout) as http,
            http.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code in (400, 404):  # Storage answers a missing object 400 or 404 by version
                raise FileNotFoundError(f"{bucket}/{key}")
            response.raise_for_status()
            with Path(dest).open("wb") as out:
                async for chunk in response.aiter_bytes(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"{bucket}/{key} is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        return size, digest.hexdigest()


def build_storage(settings: Settings, signing_key: str) -> Storage:
    if settings.storage_backend == "supabase":
        if not settings.supabase_url or not settings.supabase_service_role_key:
            raise ValueError("storage_backend=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        return SupabaseStorage(settings.supabase_url, settings.supabase_service_role_key)
    return LocalStorage(settings.state_dir / "files", signing_key, settings.public_base_url)
