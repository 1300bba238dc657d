"""Webhooks out (SPEC section 3): the user's signing secret, the delivery queue and its background deliverer.

A job change becomes a `webhook_deliveries` row (`enqueue_job_event`, callable from worker processes); the
`WebhookDeliverer` of any API process claims due rows, signs them per Standard Webhooks and POSTs them, retrying
with backoff. All state is in Postgres, so retries survive restarts and several processes can deliver at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import httpx
import psycopg
from fastapi import APIRouter, Depends
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from api import job_view
from api.app import STOP_CHECK_SECONDS, AppState, get_state, stop_background_task
from api.auth import CurrentUser
from api.database import connect
from api.errors import Problem
from api.settings import Settings
from db.jobs import get_job

log = logging.getLogger("studio.webhooks")

SECRET_PREFIX = "whsec_"
DELIVERIES_CHANNEL = "webhook_deliveries"

# job.progress is throttled: at most one per job per interval, and only after a large enough step.
PROGRESS_MIN_INTERVAL_SECONDS = 5.0
PROGRESS_MIN_STEP = 0.1
# progress is a float4 column: 0.3 - 0.2 comes out as 0.0999999, which must still count as a 10% step.
_PROGRESS_EPSILON = 1e-4

REQUEST_TIMEOUT_SECONDS = 10.0
RETRY_BASE_SECONDS = 5.0
RETRY_CAP_SECONDS = 3600.0
# A claimed delivery is invisible to other deliverers this long; if its process dies mid-send it becomes due again.
CLAIM_LEASE = timedelta(seconds=60)
MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], Awaitable[list[str]]]


# ---- signing (https://www.standardwebhooks.com/) ----


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed by the secret's
    base64-decoded part after `whsec_`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def ensure_secret(conn: psycopg.AsyncConnection, user_id: UUID) -> dict[str, Any]:
    """The user's secret row, created on first use (deliveries are signed even before the user fetched it)."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "INSERT INTO webhook_secrets (user_id, secret) VALUES (%s, %s) ON CONFLICT (user_id) DO NOTHING",
        (user_id, new_secret()),
    )
    await cursor.execute("SELECT secret, created_at, rotated_at FROM webhook_secrets WHERE user_id = %s", (user_id,))
    row = await cursor.fetchone()
    assert row is not None  # inserted or already there, in this same connection
    return row


# ---- routes ----

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

_UNAUTHORIZED = {
    401: {
        "description": "Missing or invalid bearer token",
        "content": {
            "application/problem+json": {
                "example": {
                    "type": "https://docs.audio-studio.dev/errors/unauthorized",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "A valid bearer token is required.",
                    "code": "unauthorized",
                }
            }
        },
    }
}


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="Standard Webhooks secret (`whsec_` + base64 key) that signs every delivery.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    created_at: datetime
    rotated_at: datetime | None = None


State = Annotated[AppState, Depends(get_state)]


@router.get(
    "/secret",
    response_model=WebhookSecret,
    responses=_UNAUTHORIZED,
    summary="Your webhook signing secret (created on first call)",
)
async def get_secret(user: CurrentUser, state: State) -> WebhookSecret:
    async with state.pool.connection() as conn:
        return WebhookSecret(**await ensure_secret(conn, user.id))


@router.post(
    "/secret/rotate",
    response_model=WebhookSecret,
    responses=_UNAUTHORIZED,
    summary="Replace your webhook signing secret; later deliveries, retries included, use the new one",
)
async def rotate_secret(user: CurrentUser, state: State) -> WebhookSecret:
    async with state.pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "INSERT INTO webhook_secrets (user_id, secret) VALUES (%(user)s, %(secret)s)"
            " ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, rotated_at = now()"
            " RETURNING secret, created_at, rotated_at",
            {"user": user.id, "secret": new_secret()},
        )
        row = await cursor.fetchone()
    assert row is not None
    return WebhookSecret(**row)


# ---- URL policy (SSRF) ----


def _allow_insecure(settings: Settings) -> bool:
    # Local development and tests deliver to http://127.0.0.1; production refuses both http and private targets.
    return settings.webhook_allow_insecure_urls


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def validate_webhook_url(url: str, settings: Settings) -> str:
    """Submit-time check of a job's `webhook_url`; raises Problem(422, "invalid_webhook_url"). Host names are
    resolved again at delivery time, where private addresses are refused too."""

    def invalid(detail: str) -> Problem:
        return Problem(422, "invalid_webhook_url", "The webhook URL is not accepted", detail)

    if len(url) > MAX_URL_LENGTH:
        raise invalid(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise invalid("The URL cannot be parsed.") from exc
    insecure_ok = _allow_insecure(settings)
    if parts.scheme != "https" and not (insecure_ok and parts.scheme == "http"):
        raise invalid("Webhook URLs must use https.")
    if not parts.hostname:
        raise invalid("The URL has no host.")
    if parts.username or parts.password:
        raise invalid("Credentials in the URL are not accepted; authenticate with the webhook signature.")
    if not insecure_ok:
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            raise invalid("The URL points to a private address.")
        with contextlib.suppress(ValueError):  # a host name: checked when resolved at delivery time
            if not _is_public(host):
                raise invalid("The URL points to a private address.")
    return url


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _Refused(Exception):
    """A delivery that must not be attempted (policy), as opposed to one that failed in transit."""


# ---- enqueueing (API and worker processes) ----

_ENQUEUE_SQL = """
WITH t AS (SELECT COALESCE(%(now)s::timestamptz, now()) AS now),
last AS (
  SELECT created_at, (payload->>'progress')::float8 AS progress FROM webhook_deliveries
  WHERE job_id = %(job_id)s AND event = 'job.progress' ORDER BY created_at DESC LIMIT 1
),
inserted AS (
  INSERT INTO webhook_deliveries (id, job_id, user_id, event, url, payload, created_at, next_attempt_at)
  SELECT %(id)s, %(job_id)s, %(user_id)s, %(event)s, %(url)s, %(payload)s, t.now, t.now FROM t
  WHERE NOT %(throttle)s OR (
    %(progress)s - COALESCE((SELECT progress FROM last), 0) >= %(step)s
    AND NOT EXISTS (SELECT 1 FROM last WHERE last.created_at > t.now - make_interval(secs => %(interval)s)))
  RETURNING id
)
SELECT id, pg_notify(%(channel)s, id) FROM inserted
"""


async def enqueue_job_event(
    conn: psycopg.AsyncConnection, job_id: UUID, event: str, *, now: datetime | None = None
) -> str | None:
    """Queue `event` for the job's webhook, if it has one that wants it; returns the delivery id (the
    `webhook-id`), or None when nothing was queued (no URL, filtered out, or a throttled job.progress).

    Call it in the same transaction as the job change when there is one: the delivery then exists iff the change
    committed, and the deliverers are woken by NOTIFY on commit. `now` overrides the database clock (tests)."""
    if event not in job_view.WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    job = await get_job(conn, job_id)
    if job is None or not job["webhook_url"]:
        return None
    if job["webhook_events"] is not None and event not in job["webhook_events"]:
        return None
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        _ENQUEUE_SQL,
        {
            "channel": DELIVERIES_CHANNEL,
            "now": now,
            "id": f"msg_{uuid4().hex}",
            "job_id": job_id,
            "user_id": job["user_id"],
            "event": event,
            "url": job["webhook_url"],
            "payload": Jsonb(job_view.job_resource(job)),
            "throttle": event == "job.progress",
            "progress": float(job["progress"]),
            "step": PROGRESS_MIN_STEP - _PROGRESS_EPSILON,
            "interval": PROGRESS_MIN_INTERVAL_SECONDS,
        },
    )
    inserted = await cursor.fetchone()
    return inserted["id"] if inserted else None


# ---- delivery ----

_CLAIM_SQL = """
WITH due AS (
  SELECT id FROM webhook_deliveries
  WHERE state = 'pending' AND next_attempt_at <= %(now)s
  ORDER BY next_attempt_at LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries AS d
SET attempts = d.attempts + 1, last_attempt_at = %(now)s, next_attempt_at = %(lease_until)s
FROM due WHERE d.id = due.id
RETURNING d.id, d.user_id, d.event, d.url, d.payload, d.attempts, d.created_at
"""

# Guarded by `attempts`: if our lease ran out and another deliverer re-claimed the row, its result wins.
_RECORD_SQL = """
UPDATE webhook_deliveries
SET state = %(state)s, last_status_code = %(code)s, last_error = %(error)s, next_attempt_at = %(next)s,
    delivered_at = CASE WHEN %(state)s = 'delivered' THEN %(now)s END
WHERE id = %(id)s AND attempts = %(attempts)s AND state = 'pending'
"""


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff from 5 s, doubling, capped at 1 h, with jitter so failed receivers are not hit in
    lockstep; a receiver's Retry-After is honoured within the cap."""
    delay = min(RETRY_BASE_SECONDS * 2 ** (attempts - 1), RETRY_CAP_SECONDS)
    delay *= random.uniform(0.75, 1.25)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, RETRY_CAP_SECONDS)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


class WebhookDeliverer:
    """Background service delivering due webhooks; any number may run against one database."""

    def __init__(
        self, state: AppState, *, resolver: Resolver = resolve_host, batch_size: int = 20, poll_seconds: float = 15.0
    ) -> None:
        self._state = state
        self._resolver = resolver
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds  # safety net beside NOTIFY: retries come due without any notification
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        await stop_background_task(self._task, self._stopping)
        self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def deliver_due(self) -> int:
        """One pass: claim up to a batch of due deliveries, attempt them concurrently, record the outcomes.
        Returns how many were attempted."""
        now = self._state.clock()
        async with self._state.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_CLAIM_SQL, {"now": now, "lease_until": now + CLAIM_LEASE, "limit": self._batch_size})
            claimed = await cursor.fetchall()
        await asyncio.gather(*(self._attempt(row) for row in claimed))
        return len(claimed)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                async with await connect(self._state.database_url, self._state.settings) as listener:
                    await listener.execute(f"LISTEN {DELIVERIES_CHANNEL}")
                    backoff = 1.0
                    due, next_poll = True, 0.0
                    while not self._stopping.is_set():
                        if due or loop.time() >= next_poll:
                            while await self.deliver_due() >= self._batch_size:
                                pass
                            due, next_poll = False, loop.time() + self._poll_seconds
                        async for _ in listener.notifies(timeout=STOP_CHECK_SECONDS, stop_after=1):
                            due = True
            except (psycopg.Error, OSError) as exc:
                # The database went away: keep the process serving, come back when it does.
                log.warning("webhook deliverer: %s; retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # No redirects: a 3xx is a failed attempt, and following one could bypass the address check.
            self._http = httpx.AsyncClient(
                timeout=REQUEST_TIMEOUT_SECONDS,
                follow_redirects=False,
                headers={"user-agent": "AudioStudio-Webhooks/1"},
            )
        return self._http

    async def _check_target(self, url: str) -> None:
        if _allow_insecure(self._state.settings):
            return
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise _Refused("webhook URL must be https")
        addresses = await self._resolver(parts.hostname, parts.port or 443)
        if not addresses or not all(_is_public(address) for address in addresses):
            raise _Refused("webhook URL resolves to a non-public address")

    async def _attempt(self, row: dict[str, Any]) -> None:
        now = self._state.clock()
        code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        try:
            await self._check_target(row["url"])
            async with self._state.pool.connection() as conn:
                secret = (await ensure_secret(conn, row["user_id"]))["secret"]
            # Download URLs expire, so they are minted per attempt rather than stored in the queued snapshot.
            resource = await job_view.with_download_urls(self._state, row["payload"])
            body = json.dumps(resource, separators=(",", ":")).encode()
            timestamp = int(now.timestamp())
            headers = {
                "content-type": "application/json",
                "webhook-id": row["id"],
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, row["id"], timestamp, body),
                "webhook-event": row["event"],
            }
            # Streamed and never read: a receiver's response body is of no use and could be huge.
            async with self._client().stream("POST", row["url"], content=body, headers=headers) as response:
                code = response.status_code
                retry_after = _retry_after(response)
        except _Refused as exc:
            error, permanent = str(exc), True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except OSError as exc:  # name resolution failures and the like: retry
            error = f"{type(exc).__name__}: {exc}"[:500]
        except (psycopg.Error, asyncio.CancelledError):
            raise
        except Exception:
            # A bug of ours (e.g. building the payload) must not stop other deliveries; it is retried like a 5xx.
            log.exception("webhook %s: could not attempt delivery", row["id"])
            error = "internal error preparing the delivery"

        state, next_at = "pending", None
        if code is not None and 200 <= code < 300:
            state = "delivered"
        elif permanent or (code is not None and 400 <= code < 500 and code not in (408, 429)):
            state = "failed"
        else:
            horizon = row["created_at"] + timedelta(seconds=self._state.settings.webhook_retry_horizon_seconds)
            if now >= horizon:
                state = "failed"
            else:
                next_at = min(now + timedelta(seconds=retry_delay(row["attempts"], retry_after)), horizon)
        if code is not None and state != "delivered":
            error = error or f"HTTP {code}"
        async with self._state.pool.connection() as conn:
            await conn.execute(
                _RECORD_SQL,
                {
                    "state": state,
                    "code": code,
                    "error": error,
                    "next": next_at or now,
                    "now": now,
                    "id": row["id"],
                    "attempts": row["attempts"],
                },
            )
        log.info(
            "webhook %s %s to %s: attempt %d, %s",
            row["id"],
            row["event"],
            row["url"],
            row["attempts"],
            state if code is None else f"{state} (HTTP {code})",
        )
