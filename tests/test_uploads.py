"""Resumable uploads (tus 1.0) and `input_upload`, over real HTTP (uvicorn) on the embedded Postgres.

A TCP relay between client and server cuts the connection in the middle of a PATCH; the client resumes from the
offset HEAD answers, the stored bytes are the file's (sha256), and the upload makes exactly one job. The tus clients
are the CLI's (`api.client.upload_resumable`) and tuspy, an independent implementation. Production's path (an
authorization for Supabase Storage, the bytes never through the API) runs against the fake Storage server.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import client as cli_client
from tests.fake_supabase_storage import TUS_SIGNED, UPLOAD_SIGN, FakeSupabaseStorage
from tests.jobs_api_support import write_audio
from tests.serve_support import InProcessServer, serve_in_process

CAP = 4 * 1024 * 1024  # the deployment's resumable cap in these tests


class CuttingRelay:
    """A TCP relay to `port` that, while armed, cuts the connection carrying request byte number `cut_after` (both
    sides at once): the client's PATCH fails mid-body and the server sees the client vanish.

    After the cut, new connections wait for `settled()` (the server has recorded what the cut request brought):
    otherwise the client's HEAD can overtake the cut PATCH on its way through the server (auth, then the lock) and
    answer the old offset, which the protocol survives (409 or 423, HEAD again) but would make "resumed from the
    middle" a matter of timing."""

    def __init__(self, port: int, cut_after: int, settled: Callable[[], bool]) -> None:
        self.port, self.remaining, self.settled = port, cut_after, settled
        self.cuts = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            if self.cuts:
                _until(self.settled)
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(upstream, downstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(downstream, upstream, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, request_side: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if request_side:
                    with self._lock:
                        armed = self.remaining > 0
                        if armed and len(data) >= self.remaining:
                            sink.sendall(data[: self.remaining])
                            self.remaining, self.cuts = 0, self.cuts + 1
                            return  # `finally` closes both: the cut
                        if armed:
                            self.remaining -= len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self.listener.close()


def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition, bounded by `timeout`."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def _has_bytes(server: InProcessServer, user_id: uuid.UUID) -> Callable[[], bool]:
    """Whether the server has recorded bytes of an upload of this user."""

    async def read() -> bool:
        async with server.state.pool.connection() as conn:
            cursor = await conn.execute("SELECT 1 FROM uploads WHERE user_id = %s AND upload_offset > 0", (user_id,))
            return await cursor.fetchone() is not None

    return lambda: bool(server.call(read()))


def _serve(pg_server: Any, template: str, **overrides: Any) -> Iterator[InProcessServer]:
    settings = {"engines": "builtin", "max_resumable_upload_bytes": CAP, **overrides}
    yield from serve_in_process(pg_server, template, "uploads", **settings)


@pytest.fixture(scope="module")
def server(pg_server: Any, template_database: str) -> Iterator[InProcessServer]:
    yield from _serve(pg_server, template_database)


def _user(server: InProcessServer, email: str | None = None) -> tuple[uuid.UUID, dict[str, str]]:
    from api.security import ensure_user, mint_local_token

    email = email or f"{uuid.uuid4().hex[:8]}@example.com"
    user_id = server.call(ensure_user(server.state.pool, server.settings, email))
    token = mint_local_token(server.settings, server.state.signing_key, user_id, email)
    return user_id, {"Authorization": f"Bearer {token}"}


def _api_key_user(server: InProcessServer) -> tuple[uuid.UUID, dict[str, str]]:
    """A user with an API key (the production-mode server verifies Supabase tokens, which these tests cannot mint)."""
    from api.security import API_KEY_PREFIX, API_KEY_SHOWN_PREFIX, ensure_account, key_hash
    from db import api_keys

    user_id = uuid.uuid4()
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)

    async def create() -> None:
        async with server.state.pool.connection() as conn:
            await conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{user_id}@x.test"))
            await ensure_account(conn, user_id, server.settings.welcome_credits)
            await api_keys.create(conn, user_id, "uploads", key[:API_KEY_SHOWN_PREFIX], key_hash(key))

    server.call(create())
    return user_id, {"Authorization": f"Bearer {key}"}


def _row(server: InProcessServer, upload_id: str) -> dict[str, Any]:
    from psycopg.rows import dict_row

    async def read() -> dict[str, Any]:
        async with server.state.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT * FROM uploads WHERE id = %s", (uuid.UUID(upload_id),))
            row = await cursor.fetchone()
            assert row is not None
            return row

    return server.call(read())


def _jobs(server: InProcessServer, user_id: uuid.UUID) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    async def read() -> list[dict[str, Any]]:
        async with server.state.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT id, input_ref, input_meta FROM jobs WHERE user_id = %s", (user_id,))
            return await cursor.fetchall()

    return server.call(read())


def _available(server: InProcessServer, user_id: uuid.UUID) -> int:
    from db import ledger

    async def read() -> int:
        async with server.state.pool.connection() as conn:
            return (await ledger.balance(conn, user_id)).available

    return server.call(read())


def _follow(api: cli_client.StudioClient, job_id: str) -> dict[str, Any]:
    for _event, data in api.events(job_id):
        if data.get("status") in cli_client.FINAL_STATES:
            break
    return api.request("GET", f"/v1/jobs/{job_id}").json()


def _audio(folder: Path, seconds: float) -> tuple[Path, str]:
    path = write_audio(folder / "long take.wav", seconds=seconds)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _announce_patch(server: InProcessServer, url: str, headers: dict[str, str], length: int) -> bytes:
    """Send a PATCH's headers announcing `length` bytes, and none of them; return the status line."""
    path = httpx.URL(url).raw_path.decode()
    request = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {headers['Authorization']}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(server.sock.getsockname(), timeout=30) as conn:
        conn.sendall(request.encode())
        return conn.recv(1024).split(b"\r\n", 1)[0] + b"\r\n"


def _tus(headers: dict[str, str], **extra: str) -> dict[str, str]:
    return {**headers, "Tus-Resumable": "1.0.0", **extra}


def test_cli_upload_survives_a_cut_connection_and_makes_one_job(server: InProcessServer, tmp_path: Path) -> None:
    user_id, headers = _user(server)
    path, sha256 = _audio(tmp_path, 60.0)  # ~1.9 MB of wav
    size = path.stat().st_size
    relay = CuttingRelay(server.sock.getsockname()[1], cut_after=size // 2, settled=_has_bytes(server, user_id))
    api = cli_client.StudioClient(relay.url, headers["Authorization"].removeprefix("Bearer "))
    seen: list[int] = []
    try:
        upload_id = cli_client.upload_resumable(api, path, progress=lambda sent, _: seen.append(sent), retry_delays=[0])
    finally:
        relay.close()
    assert relay.cuts == 1
    row = _row(server, upload_id)
    assert (row["state"], row["upload_offset"], row["size"], row["user_id"]) == ("complete", size, size, user_id)
    # The cut PATCH kept what reached the server: the resume sent the rest, not the whole file again.
    assert 0 < seen[0] < size and seen[-1] == size
    stored = server.state.storage.path_for("inputs", row["object_key"])
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha256

    direct = cli_client.StudioClient(server.base_url, headers["Authorization"].removeprefix("Bearer "))
    job = direct.request("POST", "/v1/jobs", json={"task": "master", "input_upload": upload_id}).json()
    assert job["input"]["sha256"] == sha256 and job["input"]["upload_id"] == upload_id
    assert job["input"]["source"] == "resumable_upload" and job["input"]["duration_s"] == pytest.approx(60.0)
    assert _follow(direct, job["id"])["status"] == "succeeded"

    # One job per upload: a second submit is refused before anything is held; another user's id does not exist.
    before = _available(server, user_id)
    again = httpx.post(
        f"{server.base_url}/v1/jobs", headers=headers, json={"task": "master", "input_upload": upload_id}
    )
    assert (again.status_code, again.json()["code"]) == (409, "upload_used")
    assert _available(server, user_id) == before
    _, bob = _user(server)
    stolen = httpx.post(f"{server.base_url}/v1/jobs", headers=bob, json={"task": "master", "input_upload": upload_id})
    assert (stolen.status_code, stolen.json()["code"]) == (404, "upload_not_found")
    assert httpx.head(f"{server.base_url}/v1/uploads/{upload_id}", headers=_tus(bob)).status_code == 404
    assert [str(row["id"]) for row in _jobs(server, user_id)] == [job["id"]]
    # The worker deleted the input when the job ended: the upload's object went with it.
    assert not stored.exists()


def test_tuspy_creates_is_cut_and_resumes_from_head(server: InProcessServer, tmp_path: Path) -> None:
    from tusclient import client as tus_client
    from tusclient.exceptions import TusCommunicationError, TusUploadFailed

    user_id, headers = _user(server)
    path, sha256 = _audio(tmp_path, 45.0)
    size = path.stat().st_size
    relay = CuttingRelay(server.sock.getsockname()[1], cut_after=size // 3, settled=_has_bytes(server, user_id))
    try:
        first = tus_client.TusClient(f"{relay.url}/v1/uploads", headers=headers).uploader(
            str(path), metadata={"filename": path.name, "filetype": "audio/wav"}, retries=0
        )
        with pytest.raises((TusUploadFailed, TusCommunicationError)):
            first.upload()
    finally:
        relay.close()
    upload_url = first.url
    assert upload_url is not None and upload_url.startswith(f"{relay.url}/v1/uploads/")
    upload_url = upload_url.replace(relay.url, server.base_url)
    _until(_has_bytes(server, user_id))  # see CuttingRelay: the cut PATCH has been recorded

    # A fresh client resumes from the offset HEAD answers, checksumming each chunk (tus checksum extension).
    second = tus_client.TusClient(f"{server.base_url}/v1/uploads", headers=headers).uploader(
        str(path), url=upload_url, chunk_size=256 * 1024, upload_checksum=True
    )
    assert 0 < second.offset < size
    second.upload()
    upload_id = upload_url.rsplit("/", 1)[1]
    row = _row(server, upload_id)
    assert (row["state"], row["filename"], row["content_type"]) == ("complete", path.name, "audio/wav")
    assert hashlib.sha256(server.state.storage.path_for("inputs", row["object_key"]).read_bytes()).hexdigest() == sha256

    head = httpx.head(upload_url, headers=_tus(headers))
    assert (head.headers["upload-offset"], head.headers["upload-length"]) == (str(size), str(size))
    assert head.headers["upload-expires"].endswith(" GMT") and head.headers["cache-control"] == "no-store"
    # A quote reads the upload exactly like a submit would, and does not consume it.
    quote = httpx.post(
        f"{server.base_url}/v1/quotes", headers=headers, json={"task": "master", "input_upload": upload_id}
    )
    assert quote.status_code == 200 and quote.json()["duration_s"] == pytest.approx(45.0)
    assert httpx.get(f"{server.base_url}/v1/uploads/{upload_id}", headers=headers).json()["state"] == "complete"
    form = httpx.post(f"{server.base_url}/v1/jobs", headers=headers, data={"task": "master", "input_upload": upload_id})
    assert form.status_code == 202 and form.json()["input"]["sha256"] == sha256
    assert len(_jobs(server, user_id)) == 1


def test_protocol_errors_and_limits_charge_nothing(server: InProcessServer, tmp_path: Path) -> None:
    user_id, headers = _user(server)
    base = server.base_url
    before = _available(server, user_id)

    options = httpx.options(f"{base}/v1/uploads")
    assert options.status_code == 204
    assert options.headers["tus-version"] == "1.0.0" and options.headers["tus-max-size"] == str(CAP)
    assert set(options.headers["tus-extension"].split(",")) == {"creation", "expiration", "checksum", "termination"}

    over = httpx.post(f"{base}/v1/uploads", headers=headers, json={"filename": "a.wav", "size": CAP + 1})
    assert (over.status_code, over.json()["code"]) == (413, "payload_too_large")
    over_tus = httpx.post(f"{base}/v1/uploads", headers=_tus(headers, **{"Upload-Length": str(CAP + 1)}))
    assert over_tus.status_code == 413
    no_version = httpx.post(f"{base}/v1/uploads", headers={**headers, "Upload-Length": "10"})
    assert (no_version.status_code, no_version.headers["tus-version"]) == (412, "1.0.0")
    video = httpx.post(f"{base}/v1/uploads", headers=headers, json={"size": 10, "content_type": "text/html"})
    assert video.status_code == 415
    nul = httpx.post(f"{base}/v1/uploads", headers=headers, json={"size": 10, "content_type": "audio/x\u0000"})
    assert (nul.status_code, nul.json()["code"]) == (422, "invalid_request")

    metadata = f"filename {base64.b64encode(b'x.wav').decode()}"
    created = httpx.post(
        f"{base}/v1/uploads", headers=_tus(headers, **{"Upload-Length": "1000", "Upload-Metadata": metadata})
    )
    assert created.status_code == 201
    url = created.headers["location"]
    patch = _tus(headers, **{"Content-Type": "application/offset+octet-stream"})

    wrong_offset = httpx.patch(url, headers={**patch, "Upload-Offset": "5"}, content=b"x" * 10)
    assert (wrong_offset.status_code, wrong_offset.json()["upload_offset"]) == (409, 0)
    bad_sum = {
        "Upload-Offset": "0",
        "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"y").digest()).decode(),
    }
    mismatch = httpx.patch(url, headers={**patch, **bad_sum}, content=b"x" * 100)
    assert (mismatch.status_code, mismatch.json()["code"]) == (460, "checksum_mismatch")
    part = httpx.patch(url, headers={**patch, "Upload-Offset": "0"}, content=b"x" * 400)
    assert (part.status_code, part.headers["upload-offset"]) == (204, "400")
    too_much = httpx.patch(url, headers={**patch, "Upload-Offset": "400"}, content=b"x" * 601)
    assert (too_much.status_code, too_much.json()["code"]) == (413, "payload_too_large")
    assert httpx.head(url, headers=_tus(headers)).headers["upload-offset"] == "400"
    # Past the cap, the request guard refuses the announced body before reading a byte of it.
    assert _announce_patch(server, url, headers, CAP + 1).startswith(b"HTTP/1.1 413 ")

    upload_id = url.rsplit("/", 1)[1]
    unfinished = httpx.post(f"{base}/v1/jobs", headers=headers, json={"task": "master", "input_upload": upload_id})
    assert (unfinished.status_code, unfinished.json()["code"]) == (409, "upload_incomplete")
    both = httpx.post(
        f"{base}/v1/jobs",
        headers=headers,
        json={"task": "master", "input_upload": upload_id, "input_url": "https://example.com/a.wav"},
    )
    assert both.status_code == 422
    rest = httpx.patch(url, headers={**patch, "Upload-Offset": "400"}, content=b"x" * 600)
    assert rest.headers["upload-offset"] == "1000"
    noise = httpx.post(f"{base}/v1/jobs", headers=headers, json={"task": "master", "input_upload": upload_id})
    assert (noise.status_code, noise.json()["code"]) == (422, "undecodable_audio")
    assert _available(server, user_id) == before and _jobs(server, user_id) == []

    # Termination deletes the bytes; the id is gone for good.
    terminated = httpx.delete(url, headers=_tus(headers))
    assert terminated.status_code == 204
    assert httpx.head(url, headers=_tus(headers)).status_code == 410


def test_unused_uploads_expire_with_the_retention_sweep(server: InProcessServer, tmp_path: Path) -> None:
    from api.background.reaper import clean_retention

    user_id, headers = _user(server)
    path, _ = _audio(tmp_path, 2.0)
    api = cli_client.StudioClient(server.base_url, headers["Authorization"].removeprefix("Bearer "))
    upload_id = cli_client.upload_resumable(api, path)
    row = _row(server, upload_id)
    stored = server.state.storage.path_for("inputs", row["object_key"])
    assert stored.is_file()

    state = server.state
    early = server.call(
        clean_retention(state.pool, state.storage, state.settings, row["expires_at"] - timedelta(seconds=1))
    )
    assert early.uploads_expired == 0 and stored.is_file()
    report = server.call(clean_retention(state.pool, state.storage, state.settings, row["expires_at"]))
    assert report.uploads_expired == 1
    assert not stored.exists() and _row(server, upload_id)["state"] == "expired"
    gone = httpx.post(f"{server.base_url}/v1/jobs", headers=headers, json={"task": "master", "input_upload": upload_id})
    assert (gone.status_code, gone.json()["code"]) == (410, "upload_expired")
    assert _jobs(server, user_id) == []


def test_production_hands_out_a_one_object_storage_authorization(
    pg_server: Any, template_database: str, tmp_path: Path
) -> None:
    with FakeSupabaseStorage() as fake:
        served = _serve(
            pg_server,
            template_database,
            storage_backend="supabase",
            SUPABASE_URL=fake.url,
            SUPABASE_SERVICE_ROLE_KEY="service-role-key",
        )
        server = next(served)
        try:
            user_id, headers = _api_key_user(server)
            path, sha256 = _audio(tmp_path, 3.0)
            size = path.stat().st_size
            created = httpx.post(
                f"{server.base_url}/v1/uploads",
                headers=headers,
                json={"filename": path.name, "size": size, "content_type": "audio/wav"},
            )
            assert created.status_code == 201, created.text
            upload = created.json()
            key = f"{user_id}/uploads/{upload['id']}"
            sign = next(r for r in fake.requests if r.path.startswith(UPLOAD_SIGN))
            assert (sign.method, sign.path) == ("POST", f"{UPLOAD_SIGN}inputs/{key}")
            assert sign.headers["authorization"] == "Bearer service-role-key" and sign.headers["x-upsert"] == "true"
            token = next(iter(fake.upload_tokens))
            assert fake.upload_tokens[token] == ("inputs", key)
            assert upload["upload_url"] is None and "location" not in created.headers
            assert upload["tus"] == {
                "endpoint": f"{fake.url}{TUS_SIGNED}",
                "headers": {"x-signature": token, "x-upsert": "true"},
                "metadata": {"bucketName": "inputs", "objectName": key, "contentType": "audio/wav"},
                "chunk_size": 6 * 1024 * 1024,
            }
            # The API takes no upload bytes here: tus creation on it points the client to the JSON way.
            tus_way = httpx.post(f"{server.base_url}/v1/uploads", headers=_tus(headers, **{"Upload-Length": "10"}))
            assert (tus_way.status_code, tus_way.json()["code"]) == (409, "upload_direct_only")
            # Before the bytes are there, a submit says so and holds nothing.
            early = httpx.post(
                f"{server.base_url}/v1/jobs", headers=headers, json={"task": "master", "input_upload": upload["id"]}
            )
            assert (early.status_code, early.json()["code"]) == (409, "upload_incomplete")
            # A stock tus client with only the token: no bearer token, and another object is refused.
            creation = {
                "x-signature": token,
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "4",
                "Upload-Metadata": "bucketName aW5wdXRz,objectName " + base64.b64encode(b"other/key").decode(),
            }
            assert httpx.post(f"{fake.url}{TUS_SIGNED}", headers=creation).status_code == 400

            api = cli_client.StudioClient(server.base_url, headers["Authorization"].removeprefix("Bearer "))
            uploaded_id = cli_client.upload_resumable(api, path)  # the CLI's path: its own upload, same flow
            assert uploaded_id != upload["id"]
            patches = [r for r in fake.requests if r.method == "PATCH"]
            assert patches and all(r.headers["x-signature"] and "authorization" not in r.headers for r in patches)
            assert fake.objects[("inputs", f"{user_id}/uploads/{uploaded_id}")].data == path.read_bytes()

            job = httpx.post(
                f"{server.base_url}/v1/jobs", headers=headers, json={"task": "master", "input_upload": uploaded_id}
            )
            assert job.status_code == 202, job.text
            assert job.json()["input"]["sha256"] == sha256
            assert _row(server, uploaded_id)["state"] == "used"
            assert _follow(api, job.json()["id"])["status"] == "succeeded"
        finally:
            next(served, None)


def test_studio_submit_sends_a_file_over_the_threshold_as_a_resumable_upload(
    server: InProcessServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id, headers = _user(server)
    path, sha256 = _audio(tmp_path, 5.0)
    api = cli_client.StudioClient(server.base_url, headers["Authorization"].removeprefix("Bearer "))
    assert cli_client.submit(api, "master", path, {}, wait=True, out_dir=None, resumable_over=64 * 1024) == 0
    assert "complete" in capsys.readouterr().out
    [job] = _jobs(server, user_id)
    assert job["input_meta"]["source"] == "resumable_upload" and job["input_meta"]["sha256"] == sha256
    # Under the threshold the file rides in the submit, as before.
    (tmp_path / "small").mkdir()
    small, _ = _audio(tmp_path / "small", 1.0)
    assert cli_client.submit(api, "master", small, {}, wait=False, out_dir=None, resumable_over=1 << 30) == 0
    sources = sorted(row["input_meta"]["source"] for row in _jobs(server, user_id))
    assert sources == ["resumable_upload", "upload"]


async def test_a_refused_dispatch_gives_the_upload_back(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    from tests.jobs_support import RefusingDispatcher

    path, _ = _audio(tmp_path, 1.0)
    data = path.read_bytes()
    tus = _tus(alice["headers"])
    created = await client.post("/v1/uploads", headers={**tus, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    patched = await client.patch(
        f"/v1/uploads/{upload_id}",
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=data,
    )
    assert patched.status_code == 204 and patched.headers["upload-offset"] == str(len(data))
    working = app_state.dispatcher
    app_state.dispatcher = RefusingDispatcher()
    body = {"task": "master", "input_upload": upload_id}
    refused = await client.post("/v1/jobs", headers=alice["headers"], json=body)
    assert (refused.status_code, refused.json()["code"]) == (503, "dispatch_failed")
    # Nothing charged, and the upload is still there for the retry.
    upload = (await client.get(f"/v1/uploads/{upload_id}", headers=alice["headers"])).json()
    assert (upload["state"], upload["job_id"]) == ("complete", None)
    key = f"{alice['id']}/uploads/{upload_id}"
    assert app_state.storage.path_for("inputs", key).read_bytes() == data
    app_state.dispatcher = working
    retried = await client.post("/v1/jobs", headers=alice["headers"], json=body)
    assert retried.status_code == 202, retried.text
    assert (await client.get(f"/v1/uploads/{upload_id}", headers=alice["headers"])).json()["state"] == "used"


async def test_two_racing_submits_make_one_job(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    import asyncio

    app_state.settings.max_running_jobs_per_user = 0  # the job stays queued: only the submits race
    path, _ = _audio(tmp_path, 1.0)
    data = path.read_bytes()
    tus = _tus(alice["headers"])
    upload_id = (await client.post("/v1/uploads", headers={**tus, "Upload-Length": str(len(data))})).json()["id"]
    await client.patch(
        f"/v1/uploads/{upload_id}",
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=data,
    )
    body = {"task": "master", "input_upload": upload_id}
    answers = await asyncio.gather(*(client.post("/v1/jobs", headers=alice["headers"], json=body) for _ in range(2)))
    assert sorted(answer.status_code for answer in answers) == [202, 409]
    assert [a.json()["code"] for a in answers if a.status_code == 409] == ["upload_used"]
    async with app_state.pool.connection() as conn:
        holds = await (await conn.execute("SELECT count(*) FROM holds")).fetchone()
        jobs = await (await conn.execute("SELECT count(*) FROM jobs")).fetchone()
    assert holds == (1,) and jobs == (1,)
