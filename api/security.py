"""Who is calling: token verification and API-key lookup (no web framework; `api.deps` wires it into routes).

Callers authenticate with `Authorization: Bearer <token>`, where the token is either
- a Supabase access token (or, in local mode, a token minted by `mint_local_token` in the same shape), verified by
  one code path: the accepted algorithms and keys are fixed by configuration (JWKS keys for ES256/RS256, an HS256
  secret only when one is configured), never chosen by the token; or
- a personal API key (`sk_studio_...`), stored as its SHA-256 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID, uuid4

import httpx
import jwt
import psycopg
from psycopg_pool import AsyncConnectionPool

from api.errors import Problem
from api.settings import Settings
from db import api_keys as db_api_keys
from db import ledger

log = logging.getLogger("studio.auth")

API_KEY_PREFIX = "sk_studio_"
API_KEY_SHOWN_PREFIX = len(API_KEY_PREFIX) + 6  # characters kept in listings so users can tell keys apart
JWT_LEEWAY_SECONDS = 30  # clock skew between Supabase's clock and ours
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# An unknown `kid` (key rotation) refetches the key set at most this often, so forged kids cannot make us hammer
# Supabase; failed fetches are retried no sooner either.
JWKS_REFETCH_COOLDOWN_SECONDS = 10.0
HMAC_ALGORITHM = "HS256"  # the only symmetric algorithm ever accepted, and only with a configured secret
# The two shapes a credential can have: an API key (`secrets.token_urlsafe(32)` after the prefix) or a JWT (three
# base64url parts). Anything else is no credential at all: refused without a lookup and without counting as a
# failed sign-in, and it does not open the request guard to a body.
_WELL_FORMED_TOKEN = re.compile(
    re.escape(API_KEY_PREFIX) + r"[A-Za-z0-9_-]{43}|[A-Za-z0-9_-]{4,8192}\.[A-Za-z0-9_-]{4,8192}\.[A-Za-z0-9_-]{0,8192}"
)


@dataclass(frozen=True)
class User:
    id: UUID
    email: str | None
    via: Literal["token", "api_key"] = "token"
    api_key_id: UUID | None = None  # the key this request came with (its spend caps apply to submits)


NO_CREDENTIAL = "Send `Authorization: Bearer <token>` with an access token or an API key."


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value when it is well formed, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or _WELL_FORMED_TOKEN.fullmatch(token) is None:
        return None
    return token


def unauthorized(detail: str, *, missing: bool = False) -> Problem:
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
            raise unauthorized("The token names no signing key.")
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
            raise unauthorized("The token is signed with an unknown key.")
        return key

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or a 401 Problem saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise unauthorized("The bearer token is malformed.") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise unauthorized("The token's signing algorithm is not accepted.")
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
            raise unauthorized("The token has expired.") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized("The token is not valid.") from exc
        # Supabase's anon and service_role keys are JWTs too (signed with the legacy secret): only user sessions pass.
        if claims.get("role") != "authenticated":
            raise unauthorized("The token is not a user session.")
        return claims


def token_issuer(settings: Settings) -> str:
    base = settings.supabase_url or settings.public_base_url
    return f"{base.rstrip('/')}/auth/v1"


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


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def api_key_user(conn: psycopg.AsyncConnection, key: str) -> User:
    row = await db_api_keys.find_live(conn, key_hash(key))
    if row is None:
        raise unauthorized("The API key is unknown or revoked.")
    return User(id=row[0], email=row[1], via="api_key", api_key_id=row[2])


async def ensure_account(conn: psycopg.AsyncConnection, user_id: UUID, welcome_grant: int) -> None:
    """Open the account (with its welcome grant) of a token's user on first sight."""
    exists = await (
        await conn.execute("SELECT EXISTS (SELECT 1 FROM accounts WHERE user_id = %s)", (user_id,))
    ).fetchone()
    if exists and exists[0]:
        return
    try:
        await ledger.ensure_account(conn, user_id, welcome_grant=welcome_grant)
    except psycopg.errors.ForeignKeyViolation as exc:
        # A valid token for a user that no longer exists (deleted in Supabase while the token lives on).
        raise unauthorized("The token's user does not exist.") from exc


async def ensure_user(pool: AsyncConnectionPool, settings: Settings, email: str) -> UUID:
    """Local mode: find or create the auth.users row for `email`, and its account with the welcome grant."""
    if settings.supabase_url:
        raise ValueError("users are created by Supabase Auth when SUPABASE_URL is set")
    email = email.strip().lower()
    if "@" not in email or any(ch.isspace() for ch in email):
        raise ValueError(f"not an email address: {email!r}")
    # No `ON CONFLICT (email)`: Supabase's auth.users has no unique constraint on email, only a partial unique index
    # (users_email_partial_key, WHERE is_sso_user = false), which a bare conflict target does not match; migration
    # 0013 gives the local stand-in the same shape. A concurrent first sign-in loses the insert and reads the winner's.
    async with pool.connection() as conn, conn.transaction():
        find = "SELECT id FROM auth.users WHERE email = %s AND NOT is_sso_user"
        row = await (await conn.execute(find, (email,))).fetchone()
        if row is None:
            try:
                async with conn.transaction():  # a savepoint: the unique violation leaves the outer one usable
                    cursor = await conn.execute(
                        "INSERT INTO auth.users (id, email) VALUES (%s, %s) RETURNING id", (uuid4(), email)
                    )
                    row = await cursor.fetchone()
            except psycopg.errors.UniqueViolation:
                row = await (await conn.execute(find, (email,))).fetchone()
        assert row is not None  # inserted, or it existed
        await ledger.ensure_account(conn, row[0], welcome_grant=settings.welcome_credits)
    return row[0]
