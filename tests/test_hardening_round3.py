"""Issue 20, section A: failed-auth lockout, junk credentials, slow small bodies, keep-alive, the guard's answers on
the OpenAI routes. HTTP behaviour is checked over real HTTP (uvicorn on 127.0.0.1, raw sockets) with the same
fixtures as tests/test_http_limits.py."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import outbound
from api.background import webhooks
from api.jobs.inputs import FetchPolicy, fetch_url, probe_input
from api.main import create_app
from api.ratelimit import MAX_TRACKED_ADDRESSES, address_key, window_start
from tests.jobs_api_support import write_audio
from tests.test_http_limits import RawClient, Served, raw_exchange, repeated, served, settings_update
from tests.test_webhooks_out import Receiver, delivery, enqueue, new_job, receiver

__all__ = ["receiver", "served"]  # fixtures, imported for this module's tests

MIB = 1024 * 1024


# ---- item 1: the failed-auth limiter never refuses a newcomer or a valid credential ----


async def test_a_full_failed_auth_table_refuses_no_newcomer_and_no_valid_credential(
    app_state: Any, alice: dict[str, Any]
) -> None:
    """One /48 fails once from each of its 65,536 /64s (the table is full), then 30 more times: every new client,
    valid token included, got 429 for the rest of the minute."""
    settings_update(app_state, failed_auth_per_minute=30)
    now = app_state.clock()
    app_state.clock = lambda: now  # one window throughout
    network = ipaddress.IPv6Network("2001:db8:abcd::/48")
    # The window's table as 65,536 first failures leave it (one per /64 of the /48).
    limiter = app_state.failed_auth
    limiter.window = window_start(now)
    limiter.failures = Counter({address_key(str(network[index << 64])): 1 for index in range(MAX_TRACKED_ADDRESSES)})
    app = create_app(app_state)
    guess = {"Authorization": "Bearer sk_studio_" + "x" * 43}

    async def get(client: tuple[str, int], headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.get("/v1/credits", headers=headers)

    attacker = ("2001:db8:ffff::1", 1)  # a /64 the full table does not hold
    for _ in range(31):
        assert (await get(attacker, guess)).status_code == 401  # no failures of its own on record: 401, never 429
    newcomer = await get(("198.51.100.9", 2), alice["headers"])
    assert newcomer.status_code == 200, newcomer.text
    assert (await get(("198.51.100.10", 2), guess)).status_code == 401

    # An address past its own limit: its failures are 429, its valid credential still passes.
    listed = (str(network[7 << 64]), 3)
    for _ in range(29):
        assert (await get(listed, guess)).status_code == 401
    refused = await get(listed, guess)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_failed_auth"
    assert (await get(listed, alice["headers"])).status_code == 200


# ---- item 4: junk credentials are none; small bodies get a read time that fits their cap ----


async def test_a_junk_authorization_does_not_open_the_guard_to_a_body(served: Served) -> None:
    """`Authorization: x` let a 64 MiB chunked body in (read before auth ran)."""
    for junk in ("x", "Bearer", "Bearer x", "Basic dXNlcjpwYXNz", "Bearer sk_studio_short"):
        status, headers, body, sent = await raw_exchange(
            served,
            "POST",
            "/v1/api-keys",
            {"Authorization": junk, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            repeated(b"x" * 65536, 64 * MIB),
        )
        assert status == 401 and json.loads(body)["code"] == "unauthorized", (junk, body)
        assert headers.get("connection") == "close" and sent < 64 * MIB
    assert served.counter.read.get("/v1/api-keys", 0) == 0


async def test_a_trickle_to_a_small_body_route_is_cut_off_at_the_time_its_cap_needs(
    served: Served, app_state: Any
) -> None:
    """One byte every 29 s held the Stripe webhook (no header needed) for the uploads' 15 minutes. Here the idle
    limit is 0.5 s and the trickle one byte per 0.05 s, never idle; the small cap (1 KiB) allows 0.5 s + 1 KiB at
    64 KiB/s, so the request ends with 408 long before the 200 bytes are sent."""
    settings_update(app_state, body_read_idle_seconds=0.5, max_body_bytes=1024, stripe_webhook_secret="whsec_test")
    assert app_state.settings.body_read_timeout_seconds == 900.0
    pause = threading.Event()
    status, headers, body, sent = await raw_exchange(
        served,
        "POST",
        "/v1/billing/stripe-webhook",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        iter([b" "] * 200),
        between=lambda: pause.wait(0.05),  # the trickle's pace
    )
    assert status == 408 and json.loads(body)["code"] == "request_timeout", body
    assert headers.get("connection") == "close"
    assert sent < 200


# ---- item 8: a request without a body keeps its connection ----


async def test_a_get_keeps_the_connection_alive(served: Served, alice: dict[str, Any]) -> None:
    """Every bodiless request answered `Connection: close` (the guard saw its body as never read)."""

    def run() -> list[tuple[int, dict[str, str], bytes]]:
        client = RawClient(served)
        try:
            answers = []
            for path in ("/v1/health", "/v1/credits", "/v1/jobs"):
                client.send_head("GET", path, alice["headers"])
                answers.append(client.response())  # the same socket: the server kept it open
            return answers
        finally:
            client.close()

    answers = await asyncio.to_thread(run)
    for status, headers, body in answers:
        assert status == 200, body
        assert headers.get("connection") != "close"


# ---- item 10: the guard's answers on /v1/audio/* are OpenAI error objects with the real limit ----


async def test_the_guards_answers_on_the_openai_routes_are_openai_errors(
    served: Served, app_state: Any, alice: dict[str, Any]
) -> None:
    settings_update(app_state, max_upload_bytes=4 * MIB, body_read_idle_seconds=0.3)

    def exchange(headers: dict[str, str], first: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        client = RawClient(served)
        client.sock.settimeout(20)  # guards the test only
        try:
            client.send_head("POST", "/v1/audio/transcriptions", headers)
            if first:
                client.sock.sendall(first)
            return client.response()
        finally:
            client.close()

    form = {"Content-Type": "multipart/form-data; boundary=b"}
    missing = await asyncio.to_thread(exchange, {**form, "Content-Length": "100"})
    too_big = await asyncio.to_thread(exchange, {**alice["headers"], **form, "Content-Length": str(8 * MIB)})
    idle = await asyncio.to_thread(exchange, {**alice["headers"], **form, "Content-Length": "100000"}, b"--b\r\n")
    for (status, headers, body), code in (
        (missing, "unauthorized"),
        (too_big, "payload_too_large"),
        (idle, "request_timeout"),
    ):
        assert headers["content-type"] == "application/json", (status, headers)
        error = json.loads(body)["error"]
        assert error["code"] == code and isinstance(error["message"], str) and "type" in error
    assert missing[0] == 401 and too_big[0] == 413 and idle[0] == 408
    # The limit it names is the one file's, not twice it (the route takes one file).
    assert json.loads(too_big[2])["error"]["max_bytes"] == 4 * MIB


# ---- item 7: the one-click local sign-in answers only the studio's own page on this machine ----


async def test_local_sign_in_refuses_proxies_foreign_origins_and_odd_hosts(served: Served) -> None:
    host = f"127.0.0.1:{served.port}"
    page = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    refused = [
        {**page, "X-Forwarded-For": "203.0.113.7"},  # a same-host reverse proxy
        {**page, "Forwarded": "for=203.0.113.7"},
        {**page, "Via": "1.1 tunnel"},
        {**page, "X-Real-IP": "203.0.113.7"},
        {**page, "Host": f"{host}@evil.example", "Origin": f"http://{host}@evil.example"},  # parsed as 127.0.0.1
        {**page, "Host": "evil.example", "Origin": "http://evil.example"},  # a DNS-rebound page
        {key: value for key, value in page.items() if key != "Sec-Fetch-Site"},  # not a browser's fetch
        {**page, "Sec-Fetch-Site": "cross-site"},
        {**page, "Sec-Fetch-Site": "same-site"},
        {key: value for key, value in page.items() if key != "Origin"},
        {**page, "Origin": "http://evil.example"},
        {**page, "Origin": "null"},
    ]
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        for headers in refused:
            answer = await http.post("/v1/auth/local", headers=headers)
            assert answer.status_code == 403 and "access_token" not in answer.text, headers
            assert answer.json()["code"] == "local_sign_in_refused"
        for name in ("127.0.0.1", "localhost"):
            own = f"{name}:{served.port}"
            headers = {"Host": own, "Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}
            signed_in = await http.post("/v1/auth/local", headers=headers)
            assert signed_in.status_code == 200 and signed_in.json()["access_token"], signed_in.text


# ---- item 5: slow DNS holds neither the probe pool nor its caller; URL downloads are bounded per user ----


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """`slow.example` never answers (until the test ends): a DNS server that drops the queries. The system resolver
    is the boundary: everything else resolves for real."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("slow.example", b"slow.example"):
            release.wait(120)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(outbound, "DNS_TIMEOUT_SECONDS", 0.5, raising=False)
    yield release
    release.set()


async def test_slow_dns_holds_neither_the_probe_pool_nor_its_caller(slow_dns: threading.Event, tmp_path: Path) -> None:
    """Input-URL and webhook names were resolved in the default executor, which also probes every upload, with no
    timeout: 40 hung lookups (more than any default executor's threads) stalled every probe."""
    lookups = [asyncio.create_task(outbound.resolve_host("slow.example", 443)) for _ in range(40)]
    wav = write_audio(tmp_path / "in.wav", 1.0)
    probed = await asyncio.wait_for(probe_input(wav, 60.0), timeout=30)  # bounds the test only
    assert round(probed.info.duration_s) == 1
    answers = await asyncio.wait_for(asyncio.gather(*lookups, return_exceptions=True), timeout=30)
    assert all(isinstance(answer, OSError) for answer in answers), answers


class _HeldFileServer(BaseHTTPRequestHandler):
    """Serves audio once `release` is set: each GET holds a download open until then."""

    body = b""
    release = threading.Event()
    started = threading.Semaphore(0)

    def do_GET(self) -> None:
        type(self).started.release()
        type(self).release.wait(60)
        self.send_response(200)
        self.send_header("Content-Type", "audio/flac")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return None


async def test_input_url_downloads_are_bounded_per_user(
    client: Any, app_state: Any, alice: dict[str, Any], bob: dict[str, Any], tmp_path: Path
) -> None:
    settings_update(app_state, input_url_allow_insecure=True, max_url_fetches_per_user=2, rate_limit_per_minute=0)
    _HeldFileServer.body = write_audio(tmp_path / "served.flac", 1.0).read_bytes()
    _HeldFileServer.release, _HeldFileServer.started = threading.Event(), threading.Semaphore(0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeldFileServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = {"task": "midi", "input_url": f"http://127.0.0.1:{server.server_address[1]}/clip.flac"}
    try:
        held = [asyncio.create_task(client.post("/v1/quotes", headers=alice["headers"], json=body)) for _ in range(2)]
        for _ in range(2):  # both downloads reached the server
            assert await asyncio.to_thread(_HeldFileServer.started.acquire, True, 30)
        refused = await client.post("/v1/quotes", headers=alice["headers"], json=body)
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_url_fetches", refused.text
        others = asyncio.create_task(client.post("/v1/quotes", headers=bob["headers"], json=body))
        assert await asyncio.to_thread(_HeldFileServer.started.acquire, True, 30)  # bob's download started
        _HeldFileServer.release.set()
        for answer in [*(await asyncio.gather(*held)), await others]:
            assert answer.status_code == 200, answer.text
        again = await client.post("/v1/quotes", headers=alice["headers"], json=body)  # the slots were released
        assert again.status_code == 200, again.text
    finally:
        _HeldFileServer.release.set()
        server.shutdown()
        server.server_close()


# ---- item 9: internationalised names and IPv6 literals in outbound URLs ----


class _HostRecorder(BaseHTTPRequestHandler):
    hosts: list[str] = []
    body = b""

    def do_GET(self) -> None:
        type(self).hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Type", "audio/flac")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture
def host_recorder(tmp_path: Path) -> Iterator[dict[str, int]]:
    """The same file server on 127.0.0.1 and [::1], recording each request's Host header."""
    _HostRecorder.body = write_audio(tmp_path / "served.flac", 1.0).read_bytes()
    _HostRecorder.hosts = []
    servers = {"v4": ThreadingHTTPServer(("127.0.0.1", 0), _HostRecorder), "v6": _IPv6Server(("::1", 0), _HostRecorder)}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {name: server.server_address[1] for name, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


async def test_input_urls_with_an_idn_or_an_ipv6_literal_are_fetched_with_a_valid_host(
    host_recorder: dict[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`http://bücher.example/` raised UnicodeEncodeError (a 500); `http://[::1]:port/` sent `Host: ::1:port`."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("xn--bcher-kva.example", "bücher.example"):  # the DNS of the name, either form it is asked in
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    policy = FetchPolicy(allow_http=True, allow_private=True)
    v4, v6 = host_recorder["v4"], host_recorder["v6"]
    idn = await fetch_url(
        f"http://bücher.example:{v4}/clip.flac", tmp_path, max_bytes=1 << 20, timeout=10, policy=policy
    )
    literal = await fetch_url(f"http://[::1]:{v6}/clip.flac", tmp_path, max_bytes=1 << 20, timeout=10, policy=policy)
    assert idn.bytes == literal.bytes == len(_HostRecorder.body)
    assert _HostRecorder.hosts == [f"xn--bcher-kva.example:{v4}", f"[::1]:{v6}"]


async def test_a_webhook_url_with_an_idn_is_delivered_with_its_ascii_host(
    app_state: Any, alice: dict[str, Any], receiver: Receiver
) -> None:
    """A webhook to an internationalised name raised UnicodeEncodeError at every attempt, retried for 26 h."""
    settings_update(app_state, webhook_allow_insecure_urls=True)
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    job_id = await new_job(app_state, alice["id"], f"http://bücher.example:{port}/hooks")
    delivery_id = await enqueue(app_state, app_state.clock, job_id, "job.succeeded", status="running")
    deliverer = webhooks.WebhookDeliverer(app_state, resolver=resolver)
    try:
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.stop()
    row = await delivery(app_state, delivery_id)
    assert row["state"] == "delivered", row
    assert asked == ["xn--bcher-kva.example"]
    assert [request.headers["host"] for request in receiver.requests] == [f"xn--bcher-kva.example:{port}"]


# ---- item 6: a webhook's TLS connection is reused only for the name it was verified for ----


def _certificate_authority(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a leaf certificate for `name` only (and its key), as PEM files: (ca, leaf, key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("Test CA", ca_key, "Test CA", ca_key, ca=True)
    leaf = certificate(name, leaf_key, "Test CA", ca_key, ca=False)
    paths = (tmp_path / "ca.pem", tmp_path / "leaf.pem", tmp_path / "leaf.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class _KeepAliveReceiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open, so a client may reuse them
    hosts: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


async def test_a_tls_connection_made_for_one_webhook_host_is_not_reused_for_another(
    app_state: Any, alice: dict[str, Any], tmp_path: Path
) -> None:
    """Two names resolving to one address and port, delivered one after the other in one pass: a shared client
    would hand the second the first one's verified connection, so a certificate valid only for `good.example` would
    serve `other.example` too."""
    import ssl

    ca, leaf, key = _certificate_authority(tmp_path, "good.example")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(leaf, key)
    _KeepAliveReceiver.hosts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveReceiver)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    # 127.0.0.1 is where both names point; one attempt at a time, so the second could find the first's connection.
    settings_update(app_state, webhook_allow_insecure_urls=True, webhook_max_concurrent_attempts=1)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    deliverer = webhooks.WebhookDeliverer(
        app_state, resolver=resolver, verify=ssl.create_default_context(cafile=str(ca))
    )
    try:
        first_job = await new_job(app_state, alice["id"], f"https://good.example:{port}/hooks")
        first = await enqueue(app_state, app_state.clock, first_job, "job.succeeded", status="running")
        second_job = await new_job(app_state, alice["id"], f"https://other.example:{port}/hooks")
        second = await enqueue(app_state, app_state.clock, second_job, "job.succeeded", status="running")
        assert await deliverer.deliver_due() == 2
    finally:
        await deliverer.stop()
        server.shutdown()
        server.server_close()
    assert (await delivery(app_state, first))["state"] == "delivered"
    refused = await delivery(app_state, second)
    assert refused["state"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in refused["last_error"], refused
    assert _KeepAliveReceiver.hosts == [f"good.example:{port}"]


# ---- item 2: with `Prefer: wait`, an error after the job exists names it ----


async def test_an_error_after_a_waited_job_exists_names_the_job_and_says_not_to_retry(
    client: Any, app_state: Any, alice: dict[str, Any]
) -> None:
    """The job is created and finishes inside `Prefer: wait`; minting its download URLs then fails (the storage
    service is down): a plain 500, so a client would resubmit and pay again."""
    storage = app_state.storage

    async def storage_down(*args: Any, **kwargs: Any) -> str:
        raise OSError("storage unavailable")

    storage.signed_url = storage_down
    try:
        answer = await client.post(
            "/v1/jobs",
            headers={**alice["headers"], "Prefer": "wait=60"},
            json={"task": "generate", "prompt": "a bell", "params": {"duration_s": 1.0}},
        )
    finally:
        del storage.signed_url
    assert answer.status_code == 500, answer.text
    listed = (await client.get("/v1/jobs", headers=alice["headers"])).json()["data"]
    assert len(listed) == 1
    job_id = listed[0]["id"]
    assert answer.json()["job_id"] == job_id and answer.headers["location"] == f"/v1/jobs/{job_id}"
    assert answer.headers["x-should-retry"] == "false" and f"/v1/jobs/{job_id}" in answer.json()["detail"]


# ---- item 3: an Idempotency-Key's claim lives as long as its request ----


async def test_a_submit_longer_than_the_claim_lease_keeps_its_key(
    client: Any, app_state: Any, alice: dict[str, Any], tmp_path: Path
) -> None:
    """The in-flight claim lapsed 60 s after it was made, but a submit can take longer (here its input URL download
    is held open): a same-key retry after the lease took the key over and both requests charged. The lease is 1 s
    here, and the first request is held until the claim is 3 leases old on the database's clock."""
    settings_update(app_state, input_url_allow_insecure=True, idempotency_in_flight_lease_seconds=1.0)
    _HeldFileServer.body = write_audio(tmp_path / "served.flac", 1.0).read_bytes()
    _HeldFileServer.release, _HeldFileServer.started = threading.Event(), threading.Semaphore(0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeldFileServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    headers = {**alice["headers"], "Idempotency-Key": "long-submit"}
    body = {"task": "midi", "input_url": f"http://127.0.0.1:{server.server_address[1]}/clip.flac"}

    async def claim_age() -> float:
        async with app_state.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT extract(epoch FROM now() - created_at) FROM idempotency_records")
            ).fetchone()
            return float(row[0])

    try:
        first = asyncio.create_task(client.post("/v1/jobs", headers=headers, json=body))
        assert await asyncio.to_thread(_HeldFileServer.started.acquire, True, 30)  # the first submit is downloading
        for _ in range(200):  # polls the database's clock, bounded
            if await claim_age() > 3.0:
                break
            await asyncio.sleep(0.05)
        retry = await asyncio.wait_for(client.post("/v1/jobs", headers=headers, json=body), timeout=20)
        assert retry.status_code == 409 and retry.json()["code"] == "idempotency_in_flight", retry.text
        _HeldFileServer.release.set()
        created = await first
        assert created.status_code == 202, created.text
    finally:
        _HeldFileServer.release.set()
        server.shutdown()
        server.server_close()
    replayed = await client.post("/v1/jobs", headers=headers, json=body)
    assert replayed.status_code == 202 and replayed.json()["id"] == created.json()["id"]
    async with app_state.pool.connection() as conn:
        jobs, holds = await (
            await conn.execute("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM holds)")
        ).fetchone()
    assert (jobs, holds) == (1, 1)
