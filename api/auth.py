"""Who is calling, and the account endpoints hanging off the user.

Callers authenticate with `Authorization: Bearer <token>`, where the token is either
- a Supabase access token (or, in local mode, a token minted by `mint_local_token` in the same shape), verified by
  one code path: the accepted algorithms and keys are fixed by configuration (JWKS keys for ES256/RS256, an HS256
  secret only when one is configured), never chosen by the token; or
- a personal API key (`sk_studio_...`), stored as its SHA-256 only.

`CurrentUser` also makes sure the account exists with its welcome grant and applies the request-rate limit.
This module's router also serves `/v1/api-keys`, `/v1/credits` and the unauthenticated `/v1/health`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import httpx
import jwt
import psycopg
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator

from api import ratelimit
from api.app import AppState, get_state
from api.errors import Problem
from api.settings import Settings
from db import ledger

log = logging.getLogger("studio.auth")

API_KEY_PREFIX = "sk_studio_"
API_KEY_SHOWN_PREFIX = len(API_KEY_PREFIX) + 6  # characters kept in listings so users can tell keys apart
JWT_LEEWAY_SECONDS = 30  # clock skew between Supabase's clock and ours
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# An unknown `kid` (key rotation) refetches the key set at most this often, so forged kids cannot make us hammer
# Supabase; failed fetches are retried no sooner either.
JWKS_REFETCH_COOLDOWN_SECONDS = 10.0
HEALTH_TIMEOUT_SECONDS = 2.0
HMAC_ALGORITHM = "HS256"  # the only symmetric algorithm ever accepted, and only with a configured secret
VERIFIER_SERVICE = "token_verifier"  # key in AppState.services


@dataclass(frozen=True)
class User:
    id: UUID
    email: str | None
    via: Literal["token", "api_key"] = "token"


def _unauthorized(detail: str, *, missing: bool = False) -> Problem:
    challenge = "Bearer" if missing else 'Bearer error="invalid_token"'
    return Problem(401, "unauthorized", "Authentication required", detail, headers={"WWW-Authenticate": challenge})


class JwksUnavailable(Exception):
    """No usable key set: Supabase's JWKS endpoint could not be read and no unexpired copy is cached."""


def _parse_jwks(document: Any, algorithms: Collection[str]) -> dict[str, jwt.PyJWK]:
    """Signing keys by kid, keeping only keys whose algorithm is one we accept."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue  # a key type this PyJWT cannot use: skip it, keep the others
        if key.algorithm_name in algorithms:
            keys[entry["kid"]] = key
    return keys


class JwksCache:
    """Supabase's signing keys, fetched over HTTP (without blocking the event loop) and kept at most `max_age`
    seconds. `clock` is monotonic seconds; tests inject their own instead of sleeping."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Collection[str],
        max_age: float,
        refetch_cooldown: float = JWKS_REFETCH_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = frozenset(algorithms) - {HMAC_ALGORITHM}
        self.max_age = max_age
        self.refetch_cooldown = refetch_cooldown
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.max_age

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.refetch_cooldown

    async def refresh(self) -> None:
        """Fetch the key set now. Raises httpx.HTTPError or ValueError when it cannot be read."""
        self._attempted_at = self._clock()
        async with httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT_SECONDS) as http:
            response = await http.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        self._keys = _parse_jwks(response.json(), self.algorithms)
        self._fetched_at = self._clock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid`, refetching when the cache expired or (rate-limited) when `kid` is unknown."""
        if self._fresh(self._clock()) and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            now = self._clock()
            fresh = self._fresh(now)
            # Re-checked under the lock: a concurrent request may have just refreshed.
            if (not fresh or kid not in self._keys) and self._may_fetch(now):
                try:
                    await self.refresh()
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("could not fetch JWKS from %s: %s", self.url, exc)
            if not self._fresh(self._clock()):
                # Never trust keys past max_age: a key Supabase revoked must stop working.
                self._keys = {}
                raise JwksUnavailable(self.url)
            return self._keys.get(kid)


class TokenVerifier:
    """Verifies access tokens against a fixed set of algorithms and keys."""

    def __init__(self, *, issuer: str, audience: str, hs_secret: str | None, jwks: JwksCache | None) -> None:
        self.issuer = issuer
        self.audience = audience
        self._hs_secret = hs_secret
        self._jwks = jwks
        self.algorithms = frozenset(jwks.algorithms if jwks else ()) | ({HMAC_ALGORITHM} if hs_secret else set())

    @classmethod
    def from_settings(
        cls, settings: Settings, signing_key: str, *, clock: Callable[[], float] = time.monotonic
    ) -> TokenVerifier:
        """Supabase mode (SUPABASE_URL set): its JWKS, plus HS256 when the legacy secret is configured.
        Local mode: HS256 with the local signing key only."""
        if settings.supabase_url:
            jwks = JwksCache(
                f"{settings.supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json",
                algorithms=settings.jwt_algorithms,
                max_age=settings.jwks_cache_seconds,
                clock=clock,
            )
            return cls(
                issuer=token_issuer(settings),
                audience=settings.jwt_audience,
                hs_secret=settings.supabase_jwt_secret,
                jwks=jwks,
            )
        return cls(issuer=token_issuer(settings), audience=settings.jwt_audience, hs_secret=signing_key, jwks=None)

    async def _key(self, header: dict[str, Any], alg: str) -> jwt.PyJWK | str:
        if alg == HMAC_ALGORITHM:
            assert self._hs_secret is not None  # HS256 is in self.algorithms only with a secret
            return self._hs_secret
        kid = header.get("kid")
        if self._jwks is None or not isinstance(kid, str):
            raise _unauthorized("The token names no signing key.")
        try:
            key = await self._jwks.key(kid)
        except JwksUnavailable as exc:
            raise Problem(
                503,
                "auth_unavailable",
                "Token verification is unavailable",
                "The signing keys could not be fetched; retry shortly.",
                headers={"Retry-After": "10"},
            ) from exc
        if key is None or key.algorithm_name != alg:
            raise _unauthorized("The token is signed with an unknown key.")
        return key

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or a 401 Problem saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("The bearer token is malformed.") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _unauthorized("The token's signing algorithm is not accepted.")
        key = await self._key(header, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=JWT_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("The token has expired.") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("The token is not valid.") from exc
        # Supabase's anon and service_role keys are JWTs too (signed with the legacy secret): only user sessions pass.
        if claims.get("role") != "authenticated":
            raise _unauthorized("The token is not a user session.")
        return claims


def token_issuer(settings: Settings) -> str:
    base = settings.supabase_url or settings.public_base_url
    return f"{base.rstrip('/')}/auth/v1"


def token_verifier(state: AppState) -> TokenVerifier:
    """The app's verifier, built on first use (tests may put their own, with an injected clock, in its place)."""
    verifier = state.services.get(VERIFIER_SERVICE)
    if verifier is None:
        verifier = state.services[VERIFIER_SERVICE] = TokenVerifier.from_settings(state.settings, state.signing_key)
    return verifier


def mint_local_token(
    settings: Settings, signing_key: str, user_id: UUID, email: str, ttl_seconds: int = 30 * 24 * 3600
) -> str:
    """A local-mode access token, shaped like Supabase's so it goes through the same verification."""
    if settings.supabase_url:
        raise ValueError("local tokens are for local mode; with SUPABASE_URL set, sign in through Supabase Auth")
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "email": email,
        "aud": settings.jwt_audience,
        "role": "authenticated",
        "aal": "aal1",
        "is_anonymous": False,
        "iss": token_issuer(settings),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, signing_key, algorithm=HMAC_ALGORITHM)


async def ensure_user(state: AppState, email: str) -> UUID:
    """Local mode: find or create the auth.users row for `email`, and its account with the welcome grant."""
    if state.settings.supabase_url:
        raise ValueError("users are created by Supabase Auth when SUPABASE_URL is set")
    email = email.strip().lower()
    if "@" not in email or any(ch.isspace() for ch in email):
        raise ValueError(f"not an email address: {email!r}")
    async with state.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "INSERT INTO auth.users (id, email) VALUES (%s, %s) ON CONFLICT (email) DO NOTHING RETURNING id",
            (uuid4(), email),
        )
        row = await cursor.fetchone()
        if row is None:
            row = await (await conn.execute("SELECT id FROM auth.users WHERE email = %s", (email,))).fetchone()
        assert row is not None  # inserted, or it existed
        await ledger.ensure_account(conn, row[0], welcome_grant=state.settings.welcome_credits)
    return row[0]


def _key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def _api_key_user(conn: psycopg.AsyncConnection, key: str) -> User:
    # One statement: find the live key and bump last_used_at at most once a minute (no write on most requests).
    cursor = await conn.execute(
        "WITH k AS (SELECT id, user_id, last_used_at FROM api_keys WHERE key_hash = %(hash)s AND revoked_at IS NULL),"
        " touched AS (UPDATE api_keys SET last_used_at = now() FROM k WHERE api_keys.id = k.id"
        "  AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds'))"
        " SELECT k.user_id, u.email FROM k LEFT JOIN auth.users u ON u.id = k.user_id",
        {"hash": _key_hash(key)},
    )
    row = await cursor.fetchone()
    if row is None:
        raise _unauthorized("The API key is unknown or revoked.")
    return User(id=row[0], email=row[1], via="api_key")


async def _ensure_account(conn: psycopg.AsyncConnection, state: AppState, user_id: UUID) -> None:
    exists = await (
        await conn.execute("SELECT EXISTS (SELECT 1 FROM accounts WHERE user_id = %s)", (user_id,))
    ).fetchone()
    if exists and exists[0]:
        return
    try:
        await ledger.ensure_account(conn, user_id, welcome_grant=state.settings.welcome_credits)
    except psycopg.errors.ForeignKeyViolation as exc:
        # A valid token for a user that no longer exists (deleted in Supabase while the token lives on).
        raise _unauthorized("The token's user does not exist.") from exc


bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A Supabase access token, or a personal API key (`sk_studio_...`) from POST /v1/api-keys.",
)


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> User:
    if credentials is None:
        raise _unauthorized("Send `Authorization: Bearer <token>`.", missing=True)
    state = get_state(request)
    token = credentials.credentials
    if token.startswith(API_KEY_PREFIX):
        async with state.pool.connection() as conn:
            user = await _api_key_user(conn, token)
            await ratelimit.enforce(conn, user.id, now=state.clock(), limit=state.settings.rate_limit_per_minute)
        return user
    claims = await token_verifier(state).verify(token)
    if claims.get("is_anonymous") is True:
        # Anonymous sign-ins are free to create, and every account gets the welcome grant.
        raise Problem(
            403, "anonymous_not_allowed", "Sign in with an account", "Anonymous Supabase sessions cannot use the API."
        )
    try:
        user_id = UUID(str(claims["sub"]))
    except ValueError as exc:
        raise _unauthorized("The token's subject is not a user id.") from exc
    email = claims.get("email")
    user = User(id=user_id, email=email if isinstance(email, str) and email else None, via="token")
    async with state.pool.connection() as conn:
        await ratelimit.enforce(conn, user.id, now=state.clock(), limit=state.settings.rate_limit_per_minute)
        await _ensure_account(conn, state, user.id)
    return user


CurrentUser = Annotated[User, Depends(current_user)]


# ---- HTTP routes ----


class ProblemBody(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str


def problem_doc(status: int, code: str, description: str) -> dict[str, Any]:
    """An OpenAPI `responses=` entry for a problem+json answer, its example rendered by `Problem` itself."""
    example = Problem(status, code, description).body()
    return {
        "model": ProblemBody,
        "description": description,
        "content": {"application/problem+json": {"example": example}},
    }


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: problem_doc(401, "unauthorized", "Missing, invalid or expired credentials"),
    429: problem_doc(429, "rate_limited", "Too many requests; see Retry-After"),
}

router = APIRouter(prefix="/v1")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["up"] = "up"


@router.get(
    "/health",
    response_model=Health,
    tags=["health"],
    responses={503: problem_doc(503, "database_unavailable", "The database is unreachable")},
)
async def health(request: Request) -> Health:
    """Liveness and database reachability. No authentication."""
    state = get_state(request)
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            async with state.pool.connection(timeout=HEALTH_TIMEOUT_SECONDS) as conn:
                await conn.execute("SELECT 1")
    except (TimeoutError, psycopg.Error) as exc:
        log.warning("health check: database unreachable: %s", exc)
        raise Problem(503, "database_unavailable", "The database is unreachable", headers={"Retry-After": "5"}) from exc
    return Health()


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="A label to tell your keys apart.")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("name must be non-empty printable text")
        return value


class ApiKeyInfo(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")


class ApiKeyCreated(ApiKeyInfo):
    key: str = Field(description="The secret key. Shown only in this response: store it now.")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyInfo]


_KEY_COLUMNS = "id, name, prefix, created_at, last_used_at"


def _key_info(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(("id", "name", "prefix", "created_at", "last_used_at"), row, strict=True))


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, tags=["api-keys"], responses=AUTH_RESPONSES)
async def create_api_key(body: ApiKeyCreate, user: CurrentUser, request: Request) -> ApiKeyCreated:
    """Create a personal API key. The key is in this response only; we keep just its SHA-256."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    async with get_state(request).pool.connection() as conn:
        cursor = await conn.execute(
            f"INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES (%s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
            (user.id, body.name, key[:API_KEY_SHOWN_PREFIX], _key_hash(key)),
        )
        row = await cursor.fetchone()
    assert row is not None
    return ApiKeyCreated(key=key, **_key_info(row))


@router.get("/api-keys", response_model=ApiKeyList, tags=["api-keys"], responses=AUTH_RESPONSES)
async def list_api_keys(user: CurrentUser, request: Request) -> ApiKeyList:
    """Your active API keys, newest first (never the keys themselves)."""
    async with get_state(request).pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = %s AND revoked_at IS NULL ORDER BY created_at DESC",
            (user.id,),
        )
        rows = await cursor.fetchall()
    return ApiKeyList(keys=[ApiKeyInfo(**_key_info(row)) for row in rows])


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
    response_class=Response,
    tags=["api-keys"],
    responses={**AUTH_RESPONSES, 404: problem_doc(404, "not_found", "No such API key")},
)
async def revoke_api_key(key_id: UUID, user: CurrentUser, request: Request) -> Response:
    """Revoke an API key: it stops working at once. Revoking an already revoked key is a no-op."""
    async with get_state(request).pool.connection() as conn:
        cursor = await conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s AND user_id = %s RETURNING id",
            (key_id, user.id),
        )
        if await cursor.fetchone() is None:
            raise Problem(404, "not_found", "No such API key")
    return Response(status_code=204)


class Credits(BaseModel):
    available: int = Field(description="Credits you can spend now.")
    held: int = Field(description="Credits reserved by jobs that have not finished.")


class LedgerEntry(BaseModel):
    id: int
    kind: Literal["grant", "purchase", "hold", "capture", "release", "refund", "adjustment"]
    available_delta: int
    held_delta: int
    job_id: UUID | None
    reference: str | None
    created_at: datetime


class LedgerPage(BaseModel):
    entries: list[LedgerEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for older entries; null on the last page.")


@router.get("/credits", response_model=Credits, tags=["credits"], responses=AUTH_RESPONSES)
async def get_credits(user: CurrentUser, request: Request) -> Credits:
    """Your balance."""
    async with get_state(request).pool.connection() as conn:
        balance = await ledger.balance(conn, user.id)
    return Credits(available=balance.available, held=balance.held)


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"ledger:{entry_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        entry_id = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        entry_id = 0
        kind = ""
    if kind != "ledger" or entry_id <= 0:
        raise Problem(422, "invalid_cursor", "The cursor is not valid", "Use a `next_cursor` from a previous page.")
    return entry_id


@router.get(
    "/credits/ledger",
    response_model=LedgerPage,
    tags=["credits"],
    responses={**AUTH_RESPONSES, 422: problem_doc(422, "invalid_cursor", "The cursor is not valid")},
)
async def get_ledger(
    user: CurrentUser,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> LedgerPage:
    """Your ledger entries, newest first."""
    before = _decode_cursor(cursor) if cursor is not None else None
    async with get_state(request).pool.connection() as conn:
        result = await conn.execute(
            "SELECT id, kind, available_delta, held_delta, job_id, reference, created_at FROM ledger_entries"
            " WHERE user_id = %s AND (%s::bigint IS NULL OR id < %s::bigint) ORDER BY id DESC LIMIT %s",
            (user.id, before, before, limit + 1),
        )
        rows = await result.fetchall()
    fields = ("id", "kind", "available_delta", "held_delta", "job_id", "reference", "created_at")
    entries = [LedgerEntry(**dict(zip(fields, row, strict=True))) for row in rows[:limit]]
    next_cursor = _encode_cursor(entries[-1].id) if len(rows) > limit else None
    return LedgerPage(entries=entries, next_cursor=next_cursor)
