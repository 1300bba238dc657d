"""The studio's HTTP surface: pages and static files with their CSP, the public config, and the local sign-in's
refusals (Supabase configured: the route does not exist; a non-loopback client or a non-loopback Host: 403)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from api.main import create_app
from api.routes.studio import STATIC_DIR


def _client(app_state: Any, client_ip: str = "127.0.0.1", host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    """A client that sends what the studio's page sends on a same-origin POST (Origin, Sec-Fetch-Site)."""
    transport = httpx.ASGITransport(app=create_app(app_state), client=(client_ip, 51234))
    page = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}", headers=page)


async def test_pages_and_static_files_carry_a_strict_csp(app_state: Any) -> None:
    async with _client(app_state) as http:
        for path in ("/", "/jobs", "/account", "/billing/success?session_id=cs_1", "/billing/canceled"):
            page = await http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert '<script type="module" src="/studio/js/app.js">' in page.text
            csp = page.headers["content-security-policy"]
            directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
            assert directives["script-src"] == "'self'"  # no inline script, no eval, no third party
            assert "unsafe" not in directives["script-src"] and directives["object-src"] == "'none'"
            assert page.headers["referrer-policy"] == "no-referrer"
        module = await http.get("/studio/js/app.js")
        assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
        assert "content-security-policy" in module.headers
        assert (await http.get("/studio/../settings.py")).status_code == 404
        assert (await http.get("/studio/%2e%2e/studio.py")).status_code == 404
        assert (await http.get("/studio/nope.js")).status_code == 404


def test_index_has_no_inline_script_and_no_external_urls() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in html and "onclick=" not in html
    for path in [STATIC_DIR / "index.html", *STATIC_DIR.glob("js/*.js"), STATIC_DIR / "studio.css"]:
        text = path.read_text()
        assert "https://" not in text.replace("http://www.w3.org/2000/svg", ""), path  # nothing from a CDN


def test_vendored_files_match_their_lock() -> None:
    lock = json.loads((STATIC_DIR / "vendor" / "vendor.lock.json").read_text())
    assert {entry["package"] for entry in lock} == {"wavesurfer.js", "@supabase/supabase-js", "tus-js-client"}
    for entry in lock:
        data = (STATIC_DIR / "vendor" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert (STATIC_DIR / "vendor" / entry["licence_file"]).is_file() and entry["licence"] in ("MIT", "BSD-3-Clause")


async def test_local_mode_config_and_one_click_sign_in(app_state: Any) -> None:
    async with _client(app_state) as http:
        config = (await http.get("/v1/config")).json()
        assert config == {
            "mode": "local",
            "supabase_url": None,
            "supabase_anon_key": None,
            "local_sign_in": True,
            "resumable_upload_threshold_bytes": 32 * 1024 * 1024,
        }
        session = await http.post("/v1/auth/local")
        assert session.status_code == 200, session.text
        token = session.json()["access_token"]
        assert session.json()["email"] == "demo@localhost"
        credits = await http.get("/v1/credits", headers={"Authorization": f"Bearer {token}"})
        assert credits.status_code == 200 and credits.json()["available"] == app_state.settings.welcome_credits


@pytest.mark.parametrize(
    ("client_ip", "host"),
    [
        ("203.0.113.7", "127.0.0.1:8000"),  # a client on another machine
        ("10.0.0.5", "localhost:8000"),
        ("127.0.0.1", "studio.example.com"),  # a DNS-rebound page: loopback socket, foreign Host
    ],
)
async def test_local_sign_in_refuses_other_machines(app_state: Any, client_ip: str, host: str) -> None:
    async with _client(app_state, client_ip, host) as http:
        refused = await http.post("/v1/auth/local")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "local_sign_in_refused" and "access_token" not in refused.text


async def test_no_local_sign_in_when_supabase_auth_is_configured(app_state: Any) -> None:
    app_state.settings = app_state.settings.model_copy(
        update={"supabase_url": "https://abcd.supabase.co", "supabase_anon_key": "anon-public-key"}
    )
    async with _client(app_state) as http:
        assert (await http.post("/v1/auth/local")).status_code == 404
        config = (await http.get("/v1/config")).json()
        page = await http.get("/")
        schema = (await http.get("/openapi.json")).json()
    assert config == {
        "mode": "supabase",
        "supabase_url": "https://abcd.supabase.co",
        "supabase_anon_key": "anon-public-key",
        "local_sign_in": False,
        "resumable_upload_threshold_bytes": 32 * 1024 * 1024,
    }
    assert "/v1/auth/local" not in schema["paths"] and "/v1/config" in schema["paths"]
    csp = page.headers["content-security-policy"]
    assert "connect-src 'self' https://abcd.supabase.co" in csp
    assert "media-src 'self' blob: https://abcd.supabase.co" in csp
