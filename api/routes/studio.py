"""The web studio: its pages and static files, the public config it boots from, and local mode's one-click sign-in.

Everything else the studio does goes through the public `/v1` API with a bearer token, like any other client.

- `GET /` (and the app's other page paths) serve one `index.html`; `GET /studio/{file}` serves the app's modules,
  styles and the vendored libraries (`api/studio_static/vendor`, pinned in `vendor.lock.json`). No CDN: the page
  works offline.
- Every studio response carries a Content-Security-Policy that allows scripts from this origin only (no inline
  script, no eval), and connections/media from this origin plus Supabase when it is configured.
- `GET /v1/config` is public: the auth mode and, in Supabase mode, the project URL and its anon (public) key.
- `POST /v1/auth/local` exists only in local mode (no SUPABASE_URL) and signs in the local demo user. It answers
  only the studio's own page on this machine: a loopback client, a Host that is exactly a loopback name and port
  (a DNS-rebound page names its own host), no forwarding header (a same-host reverse proxy or tunnel connects from
  loopback too, with a loopback Host), `Sec-Fetch-Site: same-origin` and an Origin equal to that loopback Host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import mimetypes
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from api.deps import get_state
from api.errors import Problem
from api.routes.responses import problem_doc
from api.security import ensure_user, mint_local_token
from api.settings import Settings

STATIC_DIR = Path(__file__).resolve().parents[1] / "studio_static"
LOCAL_USER_EMAIL = "demo@localhost"  # the same demo user scripts/serve.sh tops up and prints a token for
LOCAL_TOKEN_SECONDS = 12 * 3600  # a browser session, not the CLI's month
# Paths the single-page app handles itself; Stripe Checkout returns to the two billing ones.
PAGES = ("/", "/sessions", "/jobs", "/account", "/billing/success", "/billing/canceled")
# A Host header that is a loopback name with an optional port and nothing else (`127.0.0.1:8000@evil.example` is not).
_LOOPBACK_HOST = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?", re.IGNORECASE)
# Headers a proxy or tunnel adds: a request carrying any of them did not come from a browser on this machine.
FORWARDING_HEADERS = (
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "x-original-forwarded-for",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
)
SESSION_PAGE = "/sessions/{session_id}"  # the timeline of one session (the app checks the id)
SERVICE_WORKER = STATIC_DIR / "sw.js"
# Never part of the offline shell: licences and the lock file are for people, sw.js is the worker itself.
_NOT_SHELL = (".LICENSE", "vendor.lock.json", "sw.js")
_MEDIA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".webmanifest": "application/manifest+json"}


def content_security_policy(settings: Settings) -> str:
    """Scripts only from this origin. Styles may be inline: WaveSurfer styles its shadow DOM with a <style> element.
    Supabase (auth calls, Storage's signed output URLs) is allowed for connections and media when configured."""
    supabase = ""
    if settings.supabase_url:
        parts = urlsplit(settings.supabase_url)
        supabase = f" {parts.scheme}://{parts.netloc}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            f"media-src 'self' blob:{supabase}",
            f"connect-src 'self'{supabase}",
            "font-src 'self'",
            "worker-src 'self'",
            "manifest-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def _security_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        # Signed output URLs and Checkout session ids stay out of other sites' logs.
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    }


def shell_files() -> list[str]:
    """What the service worker caches: the page and every file under /studio/ the app loads (sorted)."""
    names = sorted(
        path.relative_to(STATIC_DIR).as_posix()
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and not path.name.endswith(_NOT_SHELL)
    )
    return ["/", *(f"/studio/{name}" for name in names)]


def release_hash() -> str:
    """A hash of every static file: a new release (any file changed) gets a new service worker and a new cache."""
    digest = hashlib.sha256()
    for path in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
        digest.update(path.relative_to(STATIC_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def service_worker_source() -> str:
    return (
        SERVICE_WORKER.read_text()
        .replace('"__RELEASE__"', json.dumps(release_hash()))
        .replace("__SHELL__", json.dumps(shell_files()))
    )


class StudioConfig(BaseModel):
    mode: Literal["local", "supabase"] = Field(description="`local`: one-click sign-in; `supabase`: Supabase Auth.")
    supabase_url: str | None = None
    supabase_anon_key: str | None = Field(default=None, description="Supabase's public (anon) key, for supabase-js.")
    local_sign_in: bool = Field(description="Whether POST /v1/auth/local exists on this deployment.")
    resumable_upload_threshold_bytes: int = Field(
        description="Inputs larger than this go as a resumable upload (POST /v1/uploads) before the submit."
    )


class LocalSession(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    email: str


def _is_loopback_client(request: Request) -> bool:
    host = request.client.host if request.client else None
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_sign_in_allowed(request: Request) -> bool:
    """The studio's own page on this machine, asking directly (see the module docstring)."""
    headers = request.headers
    host = headers.get("host", "")
    return (
        _is_loopback_client(request)
        and _LOOPBACK_HOST.fullmatch(host) is not None
        and not any(name in headers for name in FORWARDING_HEADERS)
        and headers.get("sec-fetch-site") == "same-origin"
        and headers.get("origin", "").lower() in (f"http://{host.lower()}", f"https://{host.lower()}")
    )


def build_router(settings: Settings) -> APIRouter:
    """The studio's routes for this deployment: the local sign-in route is only built in local mode."""
    router = APIRouter()
    headers = {**_security_headers(settings), "Cache-Control": "no-cache"}
    local_mode = settings.supabase_url is None

    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)

    for path in (*PAGES, SESSION_PAGE):
        router.add_api_route(path, page, methods=["GET"], include_in_schema=False, response_class=FileResponse)

    worker = service_worker_source()  # read once: a release is a restart

    @router.get("/sw.js", include_in_schema=False)
    async def service_worker() -> Response:
        """At the root so its scope is the whole app; never cached by HTTP, so a new release is seen at once."""
        return Response(worker, media_type="text/javascript", headers=headers)

    @router.get("/studio/{name:path}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        path = (STATIC_DIR / name).resolve()
        if not path.is_relative_to(STATIC_DIR) or not path.is_file():
            raise Problem(404, "not_found", "Not found")
        media_type = _MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        return FileResponse(path, media_type=media_type, headers=headers)

    @router.get("/v1/config", response_model=StudioConfig, tags=["studio"], summary="Public config for the studio")
    async def studio_config() -> StudioConfig:
        """No authentication: how the studio signs users in. Only public values (the anon key is public)."""
        threshold = settings.resumable_upload_threshold_bytes
        if local_mode:
            return StudioConfig(mode="local", local_sign_in=True, resumable_upload_threshold_bytes=threshold)
        return StudioConfig(
            mode="supabase",
            supabase_url=settings.supabase_url,
            supabase_anon_key=settings.supabase_anon_key,
            local_sign_in=False,
            resumable_upload_threshold_bytes=threshold,
        )

    if local_mode:

        @router.post(
            "/v1/auth/local",
            response_model=LocalSession,
            tags=["studio"],
            summary="Local mode only: sign in as the local demo user",
            responses={403: problem_doc(403, "local_sign_in_refused", "Only the studio's own page on this machine")},
        )
        async def local_sign_in(request: Request) -> LocalSession:
            """Exists only when Supabase auth is not configured, and answers only the studio's page on this machine."""
            if not local_sign_in_allowed(request):
                raise Problem(
                    403,
                    "local_sign_in_refused",
                    "Local sign-in is for this machine only",
                    "Open the studio at http://127.0.0.1 or http://localhost on the machine running it (not through "
                    "a proxy or tunnel), or paste an API key.",
                )
            state = get_state(request)
            user_id = await ensure_user(state.pool, state.settings, LOCAL_USER_EMAIL)
            token = mint_local_token(state.settings, state.signing_key, user_id, LOCAL_USER_EMAIL, LOCAL_TOKEN_SECONDS)
            return LocalSession(access_token=token, expires_in=LOCAL_TOKEN_SECONDS, email=LOCAL_USER_EMAIL)

    return router
