"""Hostile HTTP (issue 10, items 4-7): body caps, multipart field limits, header values, slow clients, stream and
failed-auth limits. Where the behaviour depends on the server (chunked bodies, slow clients, streams), the whole
app is served by uvicorn on 127.0.0.1 and driven from a raw socket; the app is wrapped in a counter of the body
bytes it pulls, so "refused early" is checked on bytes read, never on timing."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.main import create_app
from api.wiring import background_services
from tests.jobs_api_support import multipart, write_audio

MIB = 1024 * 1024


@dataclass
class BodyCounter:
    """Counts the request-body bytes the app pulled through `receive`, per path."""

    read: dict[str, int] = field(default_factory=dict)

    def wrap(self, app: Any) -> Any:
        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)

            async def counting_receive() -> Any:
                message = await receive()
                if message["type"] == "http.request":
                    path = scope["path"]
                    self.read[path] = self.read.get(path, 0) + len(message.get("body", b""))
                return message

            await app(scope, counting_receive, send)

        return counted


@dataclass
class Served:
    host: str
    port: int
    counter: BodyCounter

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
async def served(app_state: Any) -> AsyncIterator[Served]:
    """The whole app (background loops included) behind uvicorn on 127.0.0.1, its body reads counted."""
    app = create_app(app_state, background=background_services(app_state))
    counter = BodyCounter()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    async with app.router.lifespan_context(app):
        config = uvicorn.Config(counter.wrap(app), lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        yield Served("127.0.0.1", sock.getsockname()[1], counter)
        server.should_exit = True
        await task


def settings_update(app_state: Any, **changes: Any) -> None:
    app_state.settings = app_state.settings.model_copy(update=changes)


class RawClient:
    """An HTTP/1.1 client on a plain socket, driven from a thread: it sends a chunked body piece by piece and stops
    as soon as the server answers (the answer is read before the next piece), as a hostile client would."""

    def __init__(self, served: Served) -> None:
        self.sock = socket.create_connection((served.host, served.port), timeout=30)
        self.sent_body = 0

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def answered(self) -> bool:
        import select

        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def send_chunks(self, pieces: Iterator[bytes], *, between: Any = None) -> None:
        """Chunked transfer of `pieces` until they run out or the server answers (or hangs up)."""
        try:
            for piece in pieces:
                if self.answered():
                    return
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.sent_body += len(piece)
                if between is not None:
                    between()
            if not self.answered():
                self.sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # the server answered and closed: read what it said

    def response(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            part = self.sock.recv(65536)
            if not part:
                break
            data += part
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            part = self.sock.recv(65536)
            if not part:
                break
            rest += part
        return int(status_line.split()[1]), headers, rest[:length]

    def close(self) -> None:
        self.sock.close()


async def raw_exchange(
    served: Served,
    method: str,
    path: str,
    headers: dict[str, str],
    pieces: Iterator[bytes],
    *,
    between: Any = None,
) -> tuple[int, dict[str, str], bytes, int]:
    def run() -> tuple[int, dict[str, str], bytes, int]:
        client = RawClient(served)
        try:
            client.send_head(method, path, headers)
            client.send_chunks(pieces, between=between)
            status, response_headers, body = client.response()
            return status, response_headers, body, client.sent_body
        finally:
            client.close()

    return await asyncio.to_thread(run)


def repeated(piece: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield piece


def multipart_parts(boundary: str, parts: Iterator[tuple[str, bytes]]) -> Iterator[bytes]:
    for name, value in parts:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n")
    yield f"--{boundary}--\r\n".encode()


# ---- item 4: body caps, auth before the body ----


async def test_unauthenticated_body_is_refused_before_it_is_read(served: Served) -> None:
    """Issue 10 item 4: a chunked 64 MiB body to POST /v1/api-keys without Authorization got read in full."""
    status, headers, body, sent = await raw_exchange(
        served,
        "POST",
        "/v1/api-keys",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        repeated(b"x" * 65536, 64 * MIB),
    )
    assert status == 401 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "unauthorized"
    assert headers.get("connection") == "close"  # the rest of the body is not waited for
    assert served.counter.read.get("/v1/api-keys", 0) == 0
    assert sent < 64 * MIB


async def test_body_cap_holds_without_content_length(served: Served, app_state: Any, alice: dict[str, Any]) -> None:
    """An authenticated chunked body past the small cap: 413 problem+json, the app read no more than the cap."""
    status, headers, body, _ = await raw_exchange(
        served,
        "POST",
        "/v1/api-keys",
        {**alice["headers"], "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        repeated(b" " * 65536, 16 * MIB),
    )
    cap = app_state.settings.max_body_bytes
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "payload_too_large" and json.loads(body)["max_bytes"] == cap
    assert served.counter.read["/v1/api-keys"] <= cap + 256 * 1024  # past the cap by at most one socket read


async def test_announced_length_past_the_cap_is_refused_at_once(served: Served, alice: dict[str, Any]) -> None:
    def run() -> tuple[int, dict[str, str], bytes]:
        client = RawClient(served)
        client.sock.settimeout(10)  # guards the test only: before the fix the server waited for the body
        try:
            client.send_head(
                "POST",
                "/v1/api-keys",
                {**alice["headers"], "Content-Type": "application/json", "Content-Length": str(8 << 30)},
            )
            return client.response()
        finally:
            client.close()

    status, headers, body = await asyncio.to_thread(run)
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert served.counter.read.get("/v1/api-keys", 0) == 0


async def test_uploads_get_the_upload_cap_and_other_routes_the_small_one(
    client: Any, app_state: Any, alice: dict[str, Any], tmp_path: Path
) -> None:
    settings_update(app_state, max_body_bytes=64 * 1024, max_upload_bytes=4 * MIB)
    audio = write_audio(tmp_path / "in.wav", 8.0, rate=48000)  # ~770 KB: past the small cap, within the upload cap
    assert audio.stat().st_size > 64 * 1024
    quote = await client.post("/v1/quotes", headers=alice["headers"], **multipart("midi", path=audio))
    assert quote.status_code == 200, quote.text
    big_name = {"name": "k" * 70_000}
    refused = await client.post("/v1/api-keys", headers=alice["headers"], json=big_name)
    assert refused.status_code == 413 and refused.json()["max_bytes"] == 64 * 1024
    too_big = write_audio(tmp_path / "big.wav", 60.0, rate=48000)  # ~5.8 MB
    refused = await client.post("/v1/quotes", headers=alice["headers"], **multipart("midi", path=too_big))
    assert refused.status_code == 413 and refused.json()["code"] == "payload_too_large"


# ---- item 5: multipart fields ----


async def test_sixteen_thousand_chunked_fields_are_refused_at_the_first_unknown_name(
    served: Served, alice: dict[str, Any]
) -> None:
    """Issue 10 item 5: 16,000 chunked fields were all read (and kept) before the unknown names were refused."""
    boundary = "hostileboundary"
    fields = ((f"f{index}", b"v" * 1000) for index in range(16_000))
    status, _, body, _ = await raw_exchange(
        served,
        "POST",
        "/v1/jobs",
        {
            **alice["headers"],
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Transfer-Encoding": "chunked",
        },
        multipart_parts(boundary, fields),
    )
    assert status == 422 and json.loads(body)["code"] == "invalid_request"
    assert "f0" in json.loads(body)["detail"]
    assert served.counter.read["/v1/jobs"] <= 1 * MIB  # ~16 MB sent


async def test_repeated_fields_and_text_past_the_form_budget_are_refused(served: Served, alice: dict[str, Any]) -> None:
    boundary = "hostileboundary"
    headers = {
        **alice["headers"],
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Transfer-Encoding": "chunked",
    }
    repeats = (("prompt", b"p" * 100) for _ in range(16_000))
    status, _, body, _ = await raw_exchange(served, "POST", "/v1/quotes", headers, multipart_parts(boundary, repeats))
    assert status == 422 and "more than once" in json.loads(body)["detail"]
    assert served.counter.read["/v1/quotes"] <= 1 * MIB
    # Each field under 64 KiB, together past the budget for all text fields.
    three = iter([("prompt", b"p" * 60_000), ("webhook_url", b"w" * 60_000), ("input_url", b"u" * 60_000)])
    status, _, body, _ = await raw_exchange(served, "POST", "/v1/jobs", headers, multipart_parts(boundary, three))
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"


# ---- item 6: no 5xx from any header value ----


async def test_prefer_wait_with_5000_digits_is_read_before_any_work(
    client: Any, app_state: Any, alice: dict[str, Any]
) -> None:
    """Issue 10 item 6: `Prefer: wait=<5000 digits>` answered 500 after the job was created and charged."""
    settings_update(app_state, prefer_wait_max_seconds=0)  # saturates to 0: answer at once
    body = {"task": "generate", "params": {"prompt": "a tone", "duration_s": 1, "steps": 1}}
    answer = await client.post("/v1/jobs", headers={**alice["headers"], "Prefer": "wait=" + "9" * 5000}, json=body)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Preference-Applied"] == "wait=0"
    async with app_state.pool.connection() as conn:
        jobs = await (await conn.execute("SELECT count(*) FROM jobs")).fetchone()
    assert jobs[0] == 1


async def test_last_event_id_that_is_not_ascii_digits_is_ignored(
    client: Any, app_state: Any, alice: dict[str, Any]
) -> None:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at, status)"
            " VALUES (%s, 'midi', '{}', 'basic-pitch', 5, now() + interval '1 hour', 'canceled') RETURNING id",
            (alice["id"],),
        )
        job_id = (await cursor.fetchone())[0]
    for value in ("²", "٣", "9" * 5000, "-1", "1e9"):
        answer = await client.get(
            f"/v1/jobs/{job_id}/events", headers={**alice["headers"], "Last-Event-ID": value.encode("utf-8")}
        )
        # Not a resumable id: the stream starts over (the final job's status and done), never a 5xx.
        assert answer.status_code == 200, (value, answer.text)
        assert "event: done" in answer.text


HOSTILE_VALUES = [
    "",
    " ",
    "²",
    "٣٣",
    "9" * 5000,
    "wait=" + "9" * 5000,
    "wait=²",
    "wait=-1",
    "wait=1e99",
    "Bearer " + "A" * 20_000,
    "Bearer sk_studio_" + "\x01\x7f",
    "Bearer a.b.c",
    "Bearer eyJhbGciOiJub25lIn0.e30.",
    "multipart/form-data; boundary=" + "-" * 5000,
    'multipart/form-data; boundary=""; charset=\x00',
    "multipart/form-data; charset=utf-999",
    "\x00\x01\x02\x1b[31m",
    "k" * 300,
    "ÿ" * 100,
]


def hostile_values(count: int, seed: int = 10) -> list[bytes]:
    """The fixed corpus plus `count` random values: any byte but CR/LF, digit-heavy, short and long."""
    rng = random.Random(seed)
    alphabet = [b for b in range(256) if b not in (0x0A, 0x0D)]
    digits = list(b"0123456789")
    values = [value.encode("utf-8") for value in HOSTILE_VALUES]
    for _ in range(count):
        length = rng.choice([1, 2, 8, 64, 300, 5000])
        pool = digits if rng.random() < 0.3 else alphabet
        prefix = rng.choice([b"", b"wait=", b"Bearer ", b"Bearer sk_studio_", b"multipart/form-data; boundary="])
        values.append(prefix + bytes(rng.choice(pool) for _ in range(length)))
    return values


async def test_no_header_value_gets_a_5xx(client: Any, app_state: Any, alice: dict[str, Any]) -> None:
    """Property-style: every header the API reads, over hostile values; each answer is a 2xx-4xx."""
    settings_update(app_state, rate_limit_per_minute=0, failed_auth_per_minute=0)
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at, status)"
            " VALUES (%s, 'midi', '{}', 'basic-pitch', 5, now() + interval '1 hour', 'canceled') RETURNING id",
            (alice["id"],),
        )
        job_id = (await cursor.fetchone())[0]
    bad_task = json.dumps({"task": "nope"}).encode()
    for value in hostile_values(40):
        cases = [
            ("POST", "/v1/jobs", {"Prefer": value, "Content-Type": b"application/json"}, bad_task),
            ("POST", "/v1/jobs", {"Idempotency-Key": value, "Content-Type": b"application/json"}, bad_task),
            ("POST", "/v1/quotes", {"Content-Type": value}, b"--x\r\n\r\n"),
            ("GET", f"/v1/jobs/{job_id}/events", {"Last-Event-ID": value}, b""),
        ]
        for method, path, extra, content in cases:
            answer = await client.request(method, path, headers={**alice["headers"], **extra}, content=content)
            assert answer.status_code < 500, (path, extra, answer.text)
        answer = await client.get("/v1/credits", headers={"Authorization": value})
        assert answer.status_code < 500, (value, answer.text)
    async with app_state.pool.connection() as conn:
        jobs = await (await conn.execute("SELECT count(*) FROM jobs")).fetchone()
    assert jobs[0] == 1  # only the one made above: no hostile header got a job created


# ---- item 7: slow uploads, streams, URL quotes, failed auth ----


async def test_a_trickling_upload_is_cut_off_and_its_temp_files_go(
    served: Served, app_state: Any, alice: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 7: a client sending slowly held its temp upload with no read timeout."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    settings_update(app_state, body_read_idle_seconds=5.0, body_read_timeout_seconds=0.5)
    boundary = "slowboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\nmidi\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    pieces = iter([head, *(b"\0" * 512 for _ in range(400))])
    pause = threading.Event()
    status, headers, body, sent = await raw_exchange(
        served,
        "POST",
        "/v1/jobs",
        {
            **alice["headers"],
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Transfer-Encoding": "chunked",
        },
        pieces,
        between=lambda: pause.wait(0.05),  # the trickle: never idle long enough for the idle timeout
    )
    assert status == 408 and json.loads(body)["code"] == "request_timeout", body
    assert headers.get("connection") == "close"
    assert sent < len(head) + 400 * 512
    assert not any(temp.iterdir())  # the upload's temp folder is gone


async def test_an_idle_upload_is_cut_off(served: Served, app_state: Any, alice: dict[str, Any]) -> None:
    settings_update(app_state, body_read_idle_seconds=0.3)

    def run() -> tuple[int, dict[str, str], bytes]:
        client = RawClient(served)
        client.sock.settimeout(20)  # guards the test only
        try:
            client.send_head(
                "POST",
                "/v1/jobs",
                {**alice["headers"], "Content-Type": "multipart/form-data; boundary=b", "Content-Length": "100000"},
            )
            client.sock.sendall(b"--b\r\n")
            return client.response()
        finally:
            client.close()

    status, _, body = await asyncio.to_thread(run)
    assert status == 408 and json.loads(body)["code"] == "request_timeout"


async def test_event_streams_per_user_are_capped_and_released_on_close(
    served: Served, app_state: Any, alice: dict[str, Any], bob: dict[str, Any]
) -> None:
    settings_update(app_state, max_event_streams_per_user=2)
    job_ids = []
    async with app_state.pool.connection() as conn:
        for user in (alice, alice, bob):
            cursor = await conn.execute(
                "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at, status)"
                " VALUES (%s, 'midi', '{}', 'basic-pitch', 5, now() + interval '1 hour', 'queued') RETURNING id",
                (user["id"],),
            )
            job_ids.append((await cursor.fetchone())[0])
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:

        def events(job_id: uuid.UUID, user: dict[str, Any]) -> Any:
            return http.stream("GET", f"/v1/jobs/{job_id}/events", headers=user["headers"])

        async with events(job_ids[0], alice) as first, events(job_ids[1], alice) as second:
            assert first.status_code == 200 and second.status_code == 200
            third = await http.get(f"/v1/jobs/{job_ids[0]}/events", headers=alice["headers"])
            assert third.status_code == 429 and third.headers["content-type"] == "application/problem+json"
            assert third.json()["code"] == "too_many_streams" and third.json()["limit"] == 2
            async with events(job_ids[2], bob) as other:  # another user's budget is their own
                assert other.status_code == 200
        # Both closed by the client: the server notices the disconnect and frees the slots.
        for _ in range(500):
            if app_state.event_streams.open(alice["id"]) == 0:
                break
            await asyncio.sleep(0.01)  # waiting for the server to see the disconnect, not measuring anything
        async with events(job_ids[0], alice) as again:
            assert again.status_code == 200


class _CountingFileServer(BaseHTTPRequestHandler):
    body = b""
    gets = 0

    def do_GET(self) -> None:
        type(self).gets += 1
        self.send_response(200)
        self.send_header("Content-Type", "audio/flac")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    _CountingFileServer.body = write_audio(tmp_path / "served.flac", 2.0).read_bytes()
    _CountingFileServer.gets = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingFileServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/clip.flac"
    server.shutdown()
    server.server_close()


async def test_url_quotes_are_paid_for_in_rate_limit(
    client: Any, app_state: Any, alice: dict[str, Any], file_server: str
) -> None:
    """Issue 10 item 7: a quote with `input_url` downloaded up to 200 MB for the price of one request."""
    settings_update(app_state, input_url_allow_insecure=True, rate_limit_per_minute=25, quote_fetch_rate_cost=10)
    body = {"task": "midi", "input_url": file_server}
    for _ in range(2):  # 1 + 10 requests each
        quote = await client.post("/v1/quotes", headers=alice["headers"], json=body)
        assert quote.status_code == 200, quote.text
    refused = await client.post("/v1/quotes", headers=alice["headers"], json=body)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _CountingFileServer.gets == 2  # the third was refused before downloading


async def test_failed_auth_is_rate_limited_per_client_address(
    app_state: Any, alice: dict[str, Any], client: Any
) -> None:
    """Issue 10 item 7: every unauthenticated API-key guess cost a DB query, without limit."""
    settings_update(app_state, failed_auth_per_minute=3)
    created = await client.post("/v1/api-keys", headers=alice["headers"], json={"name": "real"})
    real_key = created.json()["key"]
    guess = {"Authorization": "Bearer sk_studio_" + "x" * 43}
    for _ in range(3):
        assert (await client.get("/v1/credits", headers=guess)).status_code == 401
    refused = await client.get("/v1/credits", headers=guess)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_failed_auth"
    assert int(refused.headers["Retry-After"]) >= 1
    # Issue 20 item 1: the right key is still accepted from this address (checked through the throttle).
    accepted = await client.get("/v1/credits", headers={"Authorization": f"Bearer {real_key}"})
    assert accepted.status_code == 200
    # Another address is unaffected.
    from api.main import create_app as build

    other = httpx.ASGITransport(app=build(app_state), client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=other, base_url="http://testserver") as elsewhere:
        assert (await elsewhere.get("/v1/credits", headers={"Authorization": f"Bearer {real_key}"})).status_code == 200
