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


async def test_installable_app_manifest_icons_and_service_worker(app_state: Any) -> None:
    async with _client(app_state) as http:
        page = await http.get("/sessions/6f1c2a1e-0000-4000-8000-000000000000")  # the timeline is the same page
        assert page.status_code == 200 and '<link rel="manifest" href="/studio/manifest.webmanifest">' in page.text
        directives = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
        assert directives["worker-src"] == "'self'" and directives["manifest-src"] == "'self'"
        manifest = await http.get("/studio/manifest.webmanifest")
        assert manifest.headers["content-type"].startswith("application/manifest+json")
        body = manifest.json()
        assert body["start_url"] == "/" and body["display"] == "standalone"
        for icon in body["icons"]:
            fetched = await http.get(icon["src"])
            assert fetched.status_code == 200 and fetched.headers["content-type"] == icon["type"], icon
            if icon["type"] == "image/png":
                width, height = int.from_bytes(fetched.content[16:20]), int.from_bytes(fetched.content[20:24])
                assert f"{width}x{height}" == icon["sizes"]  # the PNG header's size is the one declared

        worker = await http.get("/sw.js")
        assert worker.status_code == 200 and worker.headers["content-type"].startswith("text/javascript")
        assert worker.headers["cache-control"] == "no-cache"  # a new release is seen at the next load
        text = worker.text
        assert "__RELEASE__" not in text and "__SHELL__" not in text
        release = text.split('const RELEASE = "', 1)[1].split('"', 1)[0]
        assert len(release) == 16 and int(release, 16) >= 0
        shell = json.loads(text.split("const SHELL = ", 1)[1].split(";\n", 1)[0])
        assert "/" in shell and "/studio/js/timeline.js" in shell and "/studio/vendor/wavesurfer.esm.js" in shell
        assert not [path for path in shell if path.startswith("/v1/") or path.endswith((".LICENSE", "sw.js"))]
        for path in shell:
            assert (await http.get(path)).status_code == 200, path  # install fails if any shell file is missing


def test_release_hash_changes_with_any_static_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from api.routes import studio

    copy = tmp_path / "static"
    shutil.copytree(STATIC_DIR, copy)
    monkeypatch.setattr(studio, "STATIC_DIR", copy)
    before = studio.release_hash()
    assert studio.release_hash() == before
    (copy / "studio.css").write_text((copy / "studio.css").read_text() + "\n/* next release */\n")
    assert studio.release_hash() != before
