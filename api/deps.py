"""The dependency-injection vocabulary of the routes, and the only one: `State` and `CurrentUser`."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection

from api import ratelimit
from api.errors import Problem
from api.security import (
    API_KEY_PREFIX,
    NO_CREDENTIAL,
    TokenVerifier,
    User,
    api_key_user,
    bearer_token,
    ensure_account,
    unauthorized,
)
from api.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.studio


State = Annotated[AppState, Depends(get_state)]


def token_verifier(state: AppState) -> TokenVerifier:
    """The app's verifier, built on first use (tests may put their own, with an injected clock, in its place)."""
    if state.token_verifier is None:
        state.token_verifier = TokenVerifier.from_settings(state.settings, state.signing_key)
    return state.token_verifier


bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A Supabase access token, or a personal API key (`sk_studio_...`) from POST /v1/api-keys.",
)


async def current_user(
    request: Request,
    state: State,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> User:
    """The caller, after the request-rate limit; a token's first sight opens its account with the welcome grant.

    A header that is not a well-formed credential counts as none (401, no lookup). An address that failed too often
    in the current window is never refused a valid credential: its checks go through the limiter's throttle, and
    its failures are answered 429 (`ratelimit.FailedAuthLimiter`)."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise unauthorized(NO_CREDENTIAL, missing=True)
    host = request.client.host if request.client is not None else None
    limiter, limit = state.failed_auth, state.settings.failed_auth_per_minute
    # Only an API key costs a database lookup before it is known to be valid (a token is checked in memory).
    if not token.startswith(API_KEY_PREFIX) or not limiter.limited(host, now=state.clock(), limit=limit):
        return await _authenticate_counting_failures(state, token, host, request.method)
    async with limiter.throttle:
        return await _authenticate_counting_failures(state, token, host, request.method)


async def _authenticate_counting_failures(state: AppState, token: str, host: str | None, method: str) -> User:
    try:
        return await _authenticate(state, token, method)
    except Problem as exc:
        if exc.status != 401:
            raise
        too_many = state.failed_auth.record(host, now=state.clock(), limit=state.settings.failed_auth_per_minute)
        if too_many is None:
            raise
        raise too_many from exc


async def _count_request(state: AppState, conn: AsyncConnection, user_id: UUID, method: str) -> None:
    """Reads in this process's memory, everything else (what can cost money) in Postgres (`api.ratelimit`)."""
    limit = state.settings.rate_limit_per_minute
    if method in ratelimit.READ_METHODS:
        state.reads.enforce(user_id, now=state.clock(), limit=limit)
    else:
        await ratelimit.enforce(conn, user_id, now=state.clock(), limit=limit)


async def _authenticate(state: AppState, token: str, method: str) -> User:
    if token.startswith(API_KEY_PREFIX):
        async with state.pool.connection() as conn:
            user = await api_key_user(conn, token)
            await _count_request(state, conn, user.id, method)
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
        raise unauthorized("The token's subject is not a user id.") from exc
    email = claims.get("email")
    user = User(id=user_id, email=email if isinstance(email, str) and email else None, via="token")
    async with state.pool.connection() as conn:
        await _count_request(state, conn, user.id, method)
        await ensure_account(conn, user.id, state.settings.welcome_credits)
    return user


CurrentUser = Annotated[User, Depends(current_user)]
