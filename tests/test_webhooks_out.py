"""Webhooks out: Standard Webhooks signatures, the delivery queue, retries, throttling and the SSRF policy, with
real HTTP deliveries to a receiver on 127.0.0.1 and a real Postgres. Time is an injected clock: no sleeps."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import socket
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from api import outbound
from api.background import webhooks
from api.errors import Problem
from api.jobs import outbox
from api.jobs.view import job_resource
from api.settings import Settings
from db.jobs import add_partial_output, get_job


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Tests deliver to http://127.0.0.1, which production refuses.
    return settings.model_copy(update={"webhook_allow_insecure_urls": True})


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on 127.0.0.1: records each request and answers with the queued status codes (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.popleft() if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                receiver._loop.call_soon_threadsafe(receiver.arrived.set)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
async def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def clock(app_state: Any) -> FakeClock:
    clock = FakeClock()
    app_state.clock = clock
    return clock


@pytest.fixture
async def deliverer(app_state: Any, clock: FakeClock) -> Any:
    deliverer = webhooks.WebhookDeliverer(app_state)
    yield deliverer
    await deliverer.stop()


def verify(secret: str, request: Received) -> bool:
    """The receiver's side, written from the Standard Webhooks spec independently of api.background.webhooks.sign."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(sig.split(",", 1) for sig in request.headers["webhook-signature"].split(" "))
    return hmac.compare_digest(versions.get("v1", ""), expected)


async def new_job(app_state: Any, user_id: uuid.UUID, url: str | None, events: list[str] | None = None) -> uuid.UUID:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at, webhook_url, webhook_events)"
            " VALUES (%s, 'midi', '{}', 'basic-pitch', 5, now() + interval '1 hour', %s, %s) RETURNING id",
            (user_id, url, events),
        )
        return (await cursor.fetchone())[0]


async def enqueue(app_state: Any, clock: FakeClock, job_id: uuid.UUID, event: str, **changes: Any) -> str | None:
    async with app_state.pool.connection() as conn, conn.transaction():
        for column, value in changes.items():
            await conn.execute(f"UPDATE jobs SET {column} = %s WHERE id = %s", (value, job_id))
        return await outbox.enqueue_job_event(conn, job_id, event, now=clock())


async def delivery(app_state: Any, delivery_id: str) -> dict[str, Any]:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT state, attempts, last_status_code, last_error, next_attempt_at, created_at, delivered_at"
            " FROM webhook_deliveries WHERE id = %s",
            (delivery_id,),
        )
        names = [column.name for column in cursor.description]
        return dict(zip(names, await cursor.fetchone(), strict=True))


async def user_secret(app_state: Any, user_id: uuid.UUID) -> str:
    async with app_state.pool.connection() as conn:
        return (await webhooks.ensure_secret(conn, user_id))["secret"]


# ---- signing ----


def test_sign_matches_the_standard_webhooks_test_vector():
    # Published vector: standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
    # test_sign_function (the same values are used by the spec's other reference libraries).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    body = b'{"test": 2432232314}'
    assert webhooks.sign(secret, msg_id, 1614265330, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    # Every signed part matters.
    assert webhooks.sign(secret, msg_id, 1614265331, body) != webhooks.sign(secret, msg_id, 1614265330, body)
    assert webhooks.sign(secret, msg_id, 1614265330, body + b" ") != webhooks.sign(secret, msg_id, 1614265330, body)


def test_new_secrets_are_whsec_with_a_32_byte_key():
    first, second = webhooks.new_secret(), webhooks.new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32


# ---- secret endpoints ----


async def test_secret_is_created_once_and_rotation_replaces_it(client, alice, bob):
    first = (await client.get("/v1/webhooks/secret", headers=alice["headers"])).json()
    again = (await client.get("/v1/webhooks/secret", headers=alice["headers"])).json()
    assert first["secret"].startswith("whsec_") and again == first and first["rotated_at"] is None
    rotated = await client.post("/v1/webhooks/secret/rotate", headers=alice["headers"])
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != first["secret"] and rotated.json()["rotated_at"] is not None
    assert (await client.get("/v1/webhooks/secret", headers=alice["headers"])).json() == rotated.json()
    assert (await client.get("/v1/webhooks/secret", headers=bob["headers"])).json()["secret"] != rotated.json()[
        "secret"
    ]
    unauthenticated = await client.get("/v1/webhooks/secret")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"].startswith("application/problem+json")


# ---- delivery ----


async def test_delivery_is_signed_with_the_users_secret_and_carries_the_job(
    app_state, alice, receiver, clock, deliverer
):
    job_id = await new_job(app_state, alice["id"], receiver.url)
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    assert delivery_id is not None and delivery_id.startswith("msg_")
    assert await deliverer.deliver_due() == 1

    [request] = receiver.requests
    assert request.headers["webhook-id"] == delivery_id
    assert request.headers["webhook-timestamp"] == str(int(clock().timestamp()))
    assert request.headers["content-type"] == "application/json"
    assert verify(await user_secret(app_state, alice["id"]), request)
    async with app_state.pool.connection() as conn:
        job = await get_job(conn, job_id)
    body = json.loads(request.body)
    assert body["id"] == str(job_id) and body["status"] == "running"
    assert body.keys() == job_resource(job).keys()

    row = await delivery(app_state, delivery_id)
    assert (row["state"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 200)
    async with app_state.pool.connection() as conn:
        job = await get_job(conn, job_id)
    assert job["last_delivery"]["state"] == "delivered" and job["last_delivery"]["status_code"] == 200
    assert await deliverer.deliver_due() == 0


async def test_a_500_is_retried_with_backoff_and_the_same_webhook_id(app_state, alice, receiver, clock, deliverer):
    receiver.statuses.extend([500, 503])
    job_id = await new_job(app_state, alice["id"], receiver.url)
    delivery_id = await enqueue(app_state, clock, job_id, "job.failed", status="failed")

    assert await deliverer.deliver_due() == 1
    first = await delivery(app_state, delivery_id)
    assert (first["state"], first["attempts"], first["last_status_code"]) == ("pending", 1, 500)
    first_delay = (first["next_attempt_at"] - clock()).total_seconds()
    assert 5 * 0.75 <= first_delay <= 5 * 1.25
    assert await deliverer.deliver_due() == 0  # not due yet

    clock.advance(first_delay)
    assert await deliverer.deliver_due() == 1
    second = await delivery(app_state, delivery_id)
    assert (second["state"], second["attempts"], second["last_status_code"]) == ("pending", 2, 503)
    assert 10 * 0.75 <= (second["next_attempt_at"] - clock()).total_seconds() <= 10 * 1.25  # doubled

    clock.advance(15)
    assert await deliverer.deliver_due() == 1
    third = await delivery(app_state, delivery_id)
    assert (third["state"], third["attempts"], third["last_status_code"]) == ("delivered", 3, 200)
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery_id}
    secret = await user_secret(app_state, alice["id"])
    assert all(verify(secret, r) for r in receiver.requests)
    assert len({r.headers["webhook-timestamp"] for r in receiver.requests}) == 3  # re-signed at each attempt


@pytest.mark.parametrize(
    ("status", "final_state"), [(400, "failed"), (410, "failed"), (408, "pending"), (429, "pending")]
)
async def test_client_errors_stop_retries_except_408_and_429(
    app_state, alice, receiver, clock, deliverer, status, final_state
):
    receiver.statuses.append(status)
    job_id = await new_job(app_state, alice["id"], receiver.url)
    delivery_id = await enqueue(app_state, clock, job_id, "job.canceled", status="canceled")
    assert await deliverer.deliver_due() == 1
    row = await delivery(app_state, delivery_id)
    assert (row["state"], row["last_status_code"]) == (final_state, status)
    clock.advance(3600)
    assert await deliverer.deliver_due() == (1 if final_state == "pending" else 0)


async def test_retries_continue_for_the_horizon_then_fail(app_state, alice, receiver, clock, deliverer):
    horizon = app_state.settings.webhook_retry_horizon_seconds
    assert horizon >= 24 * 3600  # SPEC: at least 24 h
    job_id = await new_job(app_state, alice["id"], receiver.url)
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    created = clock()
    attempts = 0
    while (row := await delivery(app_state, delivery_id))["state"] == "pending":
        receiver.statuses.append(503)
        clock.now = max(clock.now, row["next_attempt_at"])
        attempts += await deliverer.deliver_due()
        assert attempts < 100
    assert row["state"] == "failed" and row["last_status_code"] == 503
    # The last attempt happened at the horizon, not before; delays were capped at about an hour.
    assert clock() - created >= timedelta(seconds=horizon)
    assert 26 <= attempts <= 40


async def test_pending_deliveries_survive_a_restart(app_state, alice, receiver, clock, deliverer):
    receiver.statuses.append(502)
    job_id = await new_job(app_state, alice["id"], receiver.url)
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    assert await deliverer.deliver_due() == 1
    await deliverer.stop()

    restarted = webhooks.WebhookDeliverer(app_state)
    try:
        clock.advance(3600)
        assert await restarted.deliver_due() == 1
    finally:
        await restarted.stop()
    row = await delivery(app_state, delivery_id)
    assert (row["state"], row["attempts"]) == ("delivered", 2)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery_id, delivery_id]


async def test_concurrent_deliverers_send_each_message_once(app_state, alice, receiver, clock):
    ids = []
    for _ in range(12):
        job_id = await new_job(app_state, alice["id"], receiver.url)
        ids.append(await enqueue(app_state, clock, job_id, "job.started", status="running"))
    first, second = (webhooks.WebhookDeliverer(app_state, batch_size=3) for _ in range(2))

    async def drain(deliverer: webhooks.WebhookDeliverer) -> int:
        total = 0
        while attempted := await deliverer.deliver_due():
            total += attempted
        return total

    try:
        counts = await asyncio.gather(drain(first), drain(second))
    finally:
        await first.stop()
        await second.stop()
    assert sum(counts) == 12
    assert Counter(r.headers["webhook-id"] for r in receiver.requests) == Counter(ids)


async def test_background_deliverer_is_woken_by_notify(app_state, alice, receiver, clock):
    # A poll interval far longer than the wait below: only the NOTIFY can trigger this delivery in time.
    deliverer = webhooks.WebhookDeliverer(app_state, poll_seconds=600)
    await deliverer.start()
    try:
        job_id = await new_job(app_state, alice["id"], receiver.url)
        delivery_id = await enqueue(app_state, clock, job_id, "job.started", status="running")
        await asyncio.wait_for(receiver.arrived.wait(), timeout=10)
    finally:
        await deliverer.stop()
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery_id]


# ---- what gets queued ----


async def test_event_filter_and_jobs_without_a_webhook(app_state, alice, receiver, clock):
    filtered = await new_job(app_state, alice["id"], receiver.url, ["job.succeeded", "job.failed"])
    assert await enqueue(app_state, clock, filtered, "job.started", status="running") is None
    assert await enqueue(app_state, clock, filtered, "job.succeeded", status="succeeded") is not None
    silent = await new_job(app_state, alice["id"], None)
    assert await enqueue(app_state, clock, silent, "job.started", status="running") is None
    with pytest.raises(ValueError, match="unknown webhook event"):
        await enqueue(app_state, clock, filtered, "job.exploded")
    async with app_state.pool.connection() as conn:
        events = await (await conn.execute("SELECT job_id, event FROM webhook_deliveries")).fetchall()
    assert events == [(filtered, "job.succeeded")]


async def test_progress_events_are_throttled(app_state, alice, receiver, clock):
    job_id = await new_job(app_state, alice["id"], receiver.url)
    await enqueue(app_state, clock, job_id, "job.started", status="running")

    async def progress(value: float) -> bool:
        return await enqueue(app_state, clock, job_id, "job.progress", progress=value) is not None

    assert not await progress(0.05)  # under a 10% step from the start
    assert await progress(0.2)
    clock.advance(1)
    assert not await progress(0.5)  # a big step, but within 5 s of the last one
    clock.advance(5)
    assert not await progress(0.25)  # 5 s later, but a small step
    assert await progress(0.3)  # exactly 10% (float4 storage must not make it 9.99999%)
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT round((payload->>'progress')::numeric, 3) FROM webhook_deliveries"
            " WHERE event = 'job.progress' ORDER BY created_at"
        )
        assert [float(value) for (value,) in await cursor.fetchall()] == [0.2, 0.3]
    # Other events are never throttled.
    assert await enqueue(app_state, clock, job_id, "job.succeeded", status="succeeded", progress=1.0) is not None


async def test_output_events_are_opt_in_throttled_and_carry_every_partial_output(app_state, alice, receiver, clock):
    by_default = await new_job(app_state, alice["id"], receiver.url)
    await enqueue(app_state, clock, by_default, "job.started", status="running", attempts=1)
    assert await enqueue(app_state, clock, by_default, "job.output") is None  # only when the filter names it

    job_id = await new_job(app_state, alice["id"], receiver.url, ["job.output"])
    await enqueue(app_state, clock, job_id, "job.started", status="running", attempts=1)

    async def segment(index: int) -> str | None:
        async with app_state.pool.connection() as conn, conn.transaction():
            data = {"id": index, "start": float(index), "end": index + 1.0, "text": f"part {index}"}
            assert await add_partial_output(conn, job_id, 1, "segment", data) is not None
            return await outbox.enqueue_job_event(conn, job_id, "job.output", now=clock())

    first = await segment(0)
    assert first is not None
    clock.advance(1)
    assert await segment(1) is None  # within 5 s of the last one
    clock.advance(5)
    last = await segment(2)
    assert last is not None
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute("SELECT payload FROM webhook_deliveries WHERE id = %s", (last,))
        (payload,) = await cursor.fetchone()
    texts = [item["segment"]["text"] for item in payload["partial_outputs"]]
    assert texts == ["part 0", "part 1", "part 2"]  # the throttled one is not lost


# ---- SSRF policy ----


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest",
        "https://localhost:8443/x",
        "https://user:pw@hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "https:///x",
        "https://hooks.example.com:99999/x",
    ],
)
def test_production_refuses_insecure_or_private_webhook_urls(url):
    with pytest.raises(Problem) as raised:
        outbound.validate_webhook_url(url, Settings())
    assert (raised.value.status, raised.value.code) == (422, "invalid_webhook_url")


def test_production_accepts_public_https_urls_and_local_mode_may_allow_http(settings):
    assert outbound.validate_webhook_url("https://hooks.example.com/x?a=1", Settings())
    assert outbound.validate_webhook_url("https://93.184.216.34/x", Settings())
    assert outbound.validate_webhook_url("http://127.0.0.1:9000/x", settings)


async def test_delivery_refuses_hosts_resolving_to_private_addresses(app_state, alice, clock):
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["93.184.216.34", "10.0.0.7"]  # one private answer is enough to refuse (DNS rebinding)

    strict = dataclasses.replace(
        app_state, settings=app_state.settings.model_copy(update={"webhook_allow_insecure_urls": False})
    )
    job_id = await new_job(app_state, alice["id"], "https://hooks.example.com/x")
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    deliverer = webhooks.WebhookDeliverer(strict, resolver=resolver)
    try:
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.stop()
    row = await delivery(app_state, delivery_id)
    assert row["state"] == "failed" and row["last_status_code"] is None
    assert "10.0.0.7 is not a public address" in row["last_error"]


# ---- end to end ----


async def test_a_real_job_reports_to_its_webhook(client, alice, receiver, app_state):
    """Submit through the API; the local worker runs it; the app's own background deliverer signs and sends."""
    secret = (await client.get("/v1/webhooks/secret", headers=alice["headers"])).json()["secret"]
    response = await client.post(
        "/v1/jobs",
        headers={**alice["headers"], "Prefer": "wait=60"},
        json={"task": "generate", "prompt": "a bell", "params": {"duration_s": 1.0}, "webhook_url": receiver.url},
    )
    # The only job of the test finishes inside the wait: the answer is the final job.
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded" and response.json()["outputs"], response.text
    job_id = response.json()["id"]

    def succeeded() -> list[Received]:
        return [r for r in receiver.requests if r.headers["webhook-event"] == "job.succeeded"]

    while not succeeded():
        receiver.arrived.clear()
        if not succeeded():  # re-checked after clearing, so a delivery landing in between is not missed
            await asyncio.wait_for(receiver.arrived.wait(), timeout=60)
    events = [r.headers["webhook-event"] for r in receiver.requests]
    assert "job.started" in events and set(events) <= {"job.started", "job.progress", "job.succeeded"}
    assert all(verify(secret, r) for r in receiver.requests)
    [final] = succeeded()
    body = json.loads(final.body)
    assert body["id"] == job_id and body["status"] == "succeeded"
    assert body["outputs"] and all(out["url"] and out["expires_at"] for out in body["outputs"])


# ---- the shared outbound guard, DNS rebinding, and bounded attempts ----


class FakeDNS:
    """The system resolver (`socket.getaddrinfo`), which both the guard (in its DNS threads) and httpx (anyio, through
    the event loop) call. `answers[host]` lists the address of each successive lookup of `host` (the last repeats);
    others resolve for real."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.answers: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self.real(host, port, *args, **kwargs)
        answers = self.answers[name]
        address = answers[min(self.lookups.count(name), len(answers) - 1)]
        self.lookups.append(name)
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port), 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    dns = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
    return dns


def strict(app_state: Any, **settings: Any) -> Any:
    """The app state with production's outbound policy (https only, public addresses only)."""
    return dataclasses.replace(
        app_state, settings=app_state.settings.model_copy(update={"webhook_allow_insecure_urls": False, **settings})
    )


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "fec0::1",  # site-local
        "127.0.0.1",
        "10.0.0.7",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
    ],
)
async def test_one_guard_refuses_the_address_for_input_urls_and_webhooks(
    address, app_state, alice, clock, fake_dns, tmp_path
):
    from api.jobs.inputs import fetch_url

    fake_dns.answers["media.example.com"] = [address]
    with pytest.raises(Problem) as refused:
        await fetch_url("https://media.example.com/in.wav", tmp_path, max_bytes=1024, timeout=5)
    assert refused.value.code == "input_url_not_allowed"

    job_id = await new_job(app_state, alice["id"], "https://media.example.com/hook")
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    deliverer = webhooks.WebhookDeliverer(strict(app_state))  # the default resolver: the system's
    try:
        assert await asyncio.wait_for(deliverer.deliver_due(), timeout=30) == 1
    finally:
        await deliverer.stop()
    row = await delivery(app_state, delivery_id)
    # Refused for good (a failed connection would stay pending for a retry), without any HTTP exchange.
    assert (row["state"], row["attempts"], row["last_status_code"]) == ("failed", 1, None)
    assert "refused" in row["last_error"]


async def test_delivery_connects_to_the_checked_address_not_a_rebound_one(app_state, alice, clock, fake_dns):
    connections: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername")[0])  # a TLS hello reached 127.0.0.1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # The check sees a public address; any later lookup (httpx's own, at connect) would get 127.0.0.1.
    fake_dns.answers["hooks.example.com"] = ["93.184.216.34", "127.0.0.1"]
    job_id = await new_job(app_state, alice["id"], f"https://hooks.example.com:{port}/x")
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    deliverer = webhooks.WebhookDeliverer(strict(app_state, webhook_attempt_timeout_seconds=2.0))
    try:
        assert await asyncio.wait_for(deliverer.deliver_due(), timeout=30) == 1
    finally:
        await deliverer.stop()
        server.close()
        await server.wait_closed()
    assert connections == []
    assert fake_dns.lookups == ["hooks.example.com"]  # resolved once, by the guard; the connection used that answer
    row = await delivery(app_state, delivery_id)
    # 93.184.216.34 is unreachable from the test machine (or answers nothing TLS on this port): a failed attempt.
    assert (row["state"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
    assert row["next_attempt_at"] > clock()


def _peer_closed(writer: asyncio.StreamWriter) -> bool:
    """Whether the client closed this connection, asked of the kernel (the loop may not have seen the FIN yet)."""
    probe = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    try:
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.close()


class TricklingReceiver:
    """A receiver on 127.0.0.1 that reads the request, then answers one byte of a status line every 0.2 s, forever:
    per-read timeouts never fire. Records the most connections the client held open at once."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/slow"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections = [other for other in self.connections if not _peer_closed(other)] + [writer]
        self.most_open = max(self.most_open, len(self.connections))
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)  # the receiver's behaviour, not a wait in the test
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer in self.connections:
                self.connections.remove(writer)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def trickling() -> Any:
    receiver = TricklingReceiver()
    yield receiver
    await receiver.stop()


async def test_a_trickling_receiver_cannot_hold_an_attempt_past_its_deadline(app_state, alice, clock, trickling):
    url = await trickling.start()
    app_state.settings.webhook_attempt_timeout_seconds = 0.5
    job_id = await new_job(app_state, alice["id"], url)
    delivery_id = await enqueue(app_state, clock, job_id, "job.succeeded", status="running")
    deliverer = webhooks.WebhookDeliverer(app_state)
    try:
        assert await asyncio.wait_for(deliverer.deliver_due(), timeout=20) == 1
    finally:
        await deliverer.stop()
    assert len(trickling.requests) == 1
    row = await delivery(app_state, delivery_id)
    assert (row["state"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
    assert "deadline" in row["last_error"]
    assert row["next_attempt_at"] > clock()  # a retry is scheduled


async def test_attempts_are_bounded_in_all_and_per_user(app_state, alice, bob, clock, trickling):
    url = await trickling.start()
    settings = app_state.settings
    settings.webhook_attempt_timeout_seconds = 0.5
    settings.webhook_max_concurrent_attempts = 3
    settings.webhook_max_attempts_per_user = 2
    rows: dict[str, list[str]] = {"alice": [], "bob": []}
    for name, user in (("alice", alice), ("bob", bob)):
        for _ in range(4):
            job_id = await new_job(app_state, user["id"], url)
            rows[name].append(await enqueue(app_state, clock, job_id, "job.succeeded", status="running"))
    deliverer = webhooks.WebhookDeliverer(app_state, batch_size=20)
    try:
        # One pass takes at most 2 of each user's deliveries, and attempts at most 3 of them at a time.
        assert await asyncio.wait_for(deliverer.deliver_due(), timeout=30) == 4
    finally:
        await deliverer.stop()
    assert trickling.most_open <= 3 and len(trickling.requests) == 4
    for name in rows:
        attempts = [(await delivery(app_state, delivery_id))["attempts"] for delivery_id in rows[name]]
        assert sorted(attempts) == [0, 0, 1, 1], name
        for delivery_id in rows[name]:
            row = await delivery(app_state, delivery_id)
            assert row["state"] == "pending" and (row["attempts"] == 0 or "deadline" in row["last_error"])
