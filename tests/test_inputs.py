"""Input receiving: the SSRF guard for input URLs (unit) and real fetches from a local HTTP server."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from api.errors import Problem
from api.jobs.inputs import FetchPolicy, check_address, fetch_url, probe_input, resolve_checked, safe_filename
from tests import hostile_audio
from tests.jobs_api_support import write_audio

STRICT = FetchPolicy()
LOOPBACK_OK = FetchPolicy(allow_http=True, allow_private=True)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",
        "64:ff9b::a00:1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(Problem) as refused:
        check_address(ipaddress.ip_address(address))
    assert refused.value.code == "input_url_not_allowed"


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "127.1", "localhost", "::1", "169.254.169.254", "0"],
)
async def test_numeric_and_local_host_forms_resolve_to_refused_addresses(host: str) -> None:
    with pytest.raises(Problem) as refused:
        await resolve_checked(host, 443, STRICT)
    assert refused.value.code == "input_url_not_allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.wav",
        "ftp://example.com/a.wav",
        "file:///etc/passwd",
        "https://user:pw@example.com/a",
        "https:///nohost",
        "not a url",
    ],
)
async def test_urls_outside_policy_are_refused_before_any_connection(url: str, tmp_path: Path) -> None:
    with pytest.raises(Problem) as refused:
        await fetch_url(url, tmp_path, max_bytes=1000, timeout=5, policy=STRICT)
    assert refused.value.code == "input_url_not_allowed"


def test_filenames_are_cleaned() -> None:
    assert safe_filename("../../etc/pa\x00ss\nwd.wav") == "passwd.wav"
    assert safe_filename("C:\\music\\song.mp3") == "song.mp3"
    assert safe_filename("") == "input"
    # Nothing that means something in HTML survives: a client rendering the name as markup still shows text.
    hostile = safe_filename('<img src=x onerror="window.pwned=1">\'`&amp;.wav')
    assert hostile == "_img src_x onerror__window.pwned_1_____amp_.wav"
    assert not set(hostile) & set("<>=\"'`&;")
    assert safe_filename("Café – ünïcode 日本語 (v2) [final].mp3") == "Café _ ünïcode 日本語 (v2) [final].mp3"
    assert safe_filename("a\u202egnp.wav") == "agnp.wav"  # a right-to-left override is a format character (Cf)


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def audio_server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    audio = write_audio(tmp_path / "served.flac", 2.0).read_bytes()
    _Handler.routes = {
        "/clip.flac": (200, {"Content-Type": "audio/flac"}, audio),
        "/page": (200, {"Content-Type": "text/html"}, b"<html></html>"),
        "/gone": (410, {}, b""),
        "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
        "/to-clip": (302, {"Location": "/clip.flac"}, b""),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", audio
    server.shutdown()
    server.server_close()


async def test_real_fetch_with_loopback_allowed(audio_server: tuple[str, bytes], tmp_path: Path) -> None:
    base, audio = audio_server
    received = await fetch_url(f"{base}/to-clip", tmp_path, max_bytes=10_000_000, timeout=10, policy=LOOPBACK_OK)
    assert received.path.read_bytes() == audio and received.bytes == len(audio)
    assert received.filename == "clip.flac" and received.content_type == "audio/flac"
    cases = [
        ("/clip.flac", 1000, 413),
        ("/page", 10_000_000, 415),
        ("/gone", 10_000_000, 422),
        ("/to-file", 10_000_000, 422),
    ]
    for path, cap, status in cases:
        with pytest.raises(Problem) as refused:
            await fetch_url(f"{base}{path}", tmp_path, max_bytes=cap, timeout=10, policy=LOOPBACK_OK)
        assert refused.value.status == status, path
    # The same server is refused under the production policy: http, and a loopback address.
    for policy in (STRICT, FetchPolicy(allow_http=True)):
        with pytest.raises(Problem) as refused:
            await fetch_url(f"{base}/clip.flac", tmp_path, max_bytes=10_000_000, timeout=10, policy=policy)
        assert refused.value.code == "input_url_not_allowed"


async def test_submit_by_url_runs_the_job(
    client: Any, alice: dict[str, Any], app_state: Any, audio_server: tuple[str, bytes]
) -> None:
    base, audio = audio_server
    denied = await client.post(
        "/v1/jobs", headers=alice["headers"], json={"task": "midi", "input_url": f"{base}/clip.flac"}
    )
    assert denied.status_code == 422 and denied.json()["code"] == "input_url_not_allowed"
    app_state.settings = app_state.settings.model_copy(update={"input_url_allow_insecure": True})
    quote = await client.post(
        "/v1/quotes", headers=alice["headers"], json={"task": "midi", "input_url": f"{base}/clip.flac"}
    )
    assert quote.status_code == 200 and quote.json()["duration_s"] == pytest.approx(2.0, abs=0.01)
    created = await client.post(
        "/v1/jobs",
        headers={**alice["headers"], "Prefer": "wait=60"},
        json={"task": "midi", "input_url": f"{base}/clip.flac"},
    )
    # The only job of the test: it finishes inside the wait, so the answer is the final job.
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["input"]["source"] == "url" and job["input"]["bytes"] == len(audio)
    assert job["input"]["container"] == "flac"
    assert job["status"] == "succeeded", job
    assert {out["name"] for out in job["outputs"]} == {"notes.mid", "notes.json"}


async def test_probe_input_stops_reading_at_the_duration_limit(tmp_path: Path) -> None:
    # Quotes and submits probe with the deployment's limit: 2 h of header-less silence is refused after ~60 s read.
    silence = hostile_audio.silent_flac(tmp_path / "silence.flac", 2 * 3600.0)
    with hostile_audio.count_audio_read() as opened:
        with pytest.raises(Problem) as caught:
            await probe_input(silence, 60.0)
    assert (caught.value.status, caught.value.code) == (422, "audio_too_long")
    assert caught.value.extra["max_duration_s"] == 60.0
    assert hostile_audio.seconds_read(opened) <= 60.0 + hostile_audio.LARGEST_FLAC_FRAME_S


async def test_probe_input_caps_channels_and_sample_rate_as_configured(tmp_path: Path) -> None:
    wide = write_audio(tmp_path / "wide.wav", 0.1, rate=8000, channels=9)
    fast = write_audio(tmp_path / "fast.wav", 0.05, rate=384000)
    with pytest.raises(Problem) as caught:
        await probe_input(wide, 60.0)
    assert (caught.value.status, caught.value.code) == (422, "too_many_channels")
    assert caught.value.extra["max_channels"] == 8
    with pytest.raises(Problem) as caught:
        await probe_input(fast, 60.0)
    assert (caught.value.status, caught.value.code) == (422, "sample_rate_too_high")
    assert caught.value.extra["max_sample_rate"] == 192000
    assert (await probe_input(wide, 60.0, max_channels=9)).info.channels == 9
    assert (await probe_input(fast, 60.0, max_sample_rate=384000)).info.sample_rate == 384000
