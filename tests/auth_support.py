"""Helpers shared by the auth, API key, credits, health and rate-limit tests: users made for real (rows in
auth.users, tokens signed for real), a settable clock, and a JWKS server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt

from api.security import mint_local_token, token_issuer


class FakeClock:
    """A settable aware-UTC clock for AppState.clock."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2030, 1, 1, 12, 0, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class FakeMonotonic:
    """A settable monotonic clock for JwksCache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims_for(settings: Any, user_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "email": "someone@example.com",
        "aud": "authenticated",
        "role": "authenticated",
        "iss": token_issuer(settings),
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def local_user(state: Any, email: str) -> dict[str, Any]:
    from api.security import ensure_user

    user_id = await ensure_user(state.pool, state.settings, email)
    token = mint_local_token(state.settings, state.signing_key, user_id, email)
    return {"id": user_id, "email": email, "token": token, "headers": headers(token)}


async def insert_auth_user(state: Any, user_id: uuid.UUID | None = None) -> uuid.UUID:
    """A row in auth.users only, as Supabase Auth leaves it at sign-up (no account yet)."""
    user_id = user_id or uuid.uuid4()
    async with state.pool.connection() as conn:
        await conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{user_id}@example.com"))
    return user_id


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["status"] == status
    return body


class JwksServer:
    """Serves `document` at /auth/v1/.well-known/jwks.json and counts the requests; `fail` answers 500."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.fail = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if self.path != "/auth/v1/.well-known/jwks.json" or server.fail:
                    self.send_response(404 if not server.fail else 500)
                    self.end_headers()
                    return
                body = json.dumps(server.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def serve_keys(server: JwksServer, keys: list[tuple[Any, str, str]]) -> None:
    """Publish (private key, kid, alg) triples' public halves as the server's key set."""
    server.document = {"keys": [public_jwk(key, kid, alg) for key, kid, alg in keys]}


async def open_state(settings: Any, database_url: str) -> Any:
    """A second AppState with its own pool on `database_url` (custom settings, or a second API process); the auth
    routes need no storage or dispatcher."""
    from api.database import open_pool, secret_key
    from api.state import AppState

    pool = await open_pool(database_url, settings, max_size=4)
    return AppState(
        settings=settings,
        pool=pool,
        database_url=database_url,
        storage=None,
        dispatcher=None,
        signing_key=secret_key(settings),
    )


@asynccontextmanager
async def http_client(state: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Real HTTP semantics (httpx over ASGI) to the real app built on `state`, without its background loops."""
    from api.main import create_app

    app = create_app(state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http
