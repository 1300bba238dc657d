"""Webhooks out (SPEC section 3), background side: the user's signing secret and the deliverer.

A job change becomes a `webhook_deliveries` row (`api.jobs.outbox`, in the job's transaction); the
`WebhookDeliverer` of any API process (or the Modal Cron) claims due rows, signs them per Standard Webhooks and POSTs
them, retrying with backoff. All state is in Postgres, so retries survive restarts and several processes can deliver
at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import random
import secrets
import ssl
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg.rows import dict_row

from api.database import connect
from api.jobs import view
from api.jobs.outbox import DELIVERIES_CHANNEL
from api.outbound import OutboundRefused, Resolver, host_name, pinned_request, resolve_checked, resolve_host
from api.state import STOP_CHECK_SECONDS, AppState, stop_background_task

log = logging.getLogger("studio.webhooks")

SECRET_PREFIX = "whsec_"

RETRY_BASE_SECONDS = 5.0
RETRY_CAP_SECONDS = 3600.0
# A claimed delivery is invisible to other deliverers at least this long (longer when a pass's attempt deadlines
# add up to more: see `_lease`); if its process dies mid-send it becomes due again.
CLAIM_LEASE = timedelta(seconds=60)
MAX_DRAINED_RESPONSE_BYTES = 64 * 1024


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


async def rotate_secret(conn: psycopg.AsyncConnection, user_id: UUID) -> dict[str, Any]:
    """Replace the user's secret (creating it if needed); later deliveries, retries included, use the new one."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "INSERT INTO webhook_secrets (user_id, secret) VALUES (%(user)s, %(secret)s)"
        " ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, rotated_at = now()"
        " RETURNING secret, created_at, rotated_at",
        {"user": user_id, "secret": new_secret()},
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


class _Refused(Exception):
    """A delivery that must not be attempted (policy), as opposed to one that failed in transit."""


class _ClientsByName:
    """One delivery pass's HTTP clients, one per host name. Requests connect to the checked address, not the name,
    so one shared pool would hand a TLS connection verified for one name to another name resolving to the same
    address and port (skipping its certificate check): a connection is only ever reused for the name it was made
    for, and only within the pass."""

    def __init__(self, timeout: float, verify: ssl.SSLContext | bool) -> None:
        self._timeout, self._verify = timeout, verify
        self._clients: dict[str, httpx.AsyncClient] = {}

    def for_name(self, name: str) -> httpx.AsyncClient:
        if name not in self._clients:
            # No redirects: a 3xx is a failed attempt, and following one could bypass the address check. The
            # per-read timeout is a backstop; the attempt's deadline (asyncio.timeout in _attempt) bounds the total.
            self._clients[name] = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,  # a proxy from the environment would resolve the name itself, after our check
                headers={"user-agent": "AudioStudio-Webhooks/1"},
                verify=self._verify,
            )
        return self._clients[name]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


# ---- delivery ----

# At most `per_user` of one user's due deliveries per pass, so one user's slow receiver holds at most that many
# attempts while everyone else's go out. (The window runs before the row locks: a row another deliverer holds is
# skipped, never waited for.)
_CLAIM_SQL = """
WITH ranked AS (
  SELECT id, next_attempt_at, row_number() OVER (PARTITION BY user_id ORDER BY next_attempt_at, id) AS nth
  FROM webhook_deliveries
  WHERE state = 'pending' AND next_attempt_at <= %(now)s
),
due AS (
  SELECT d.id FROM webhook_deliveries AS d JOIN ranked ON ranked.id = d.id
  WHERE ranked.nth <= %(per_user)s AND d.state = 'pending' AND d.next_attempt_at <= %(now)s
  ORDER BY ranked.next_attempt_at LIMIT %(limit)s
  FOR UPDATE OF d SKIP LOCKED
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
        self,
        state: AppState,
        *,
        resolver: Resolver = resolve_host,
        batch_size: int = 20,
        poll_seconds: float = 15.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._state = state
        self._resolver = resolver
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds  # safety net beside NOTIFY: retries come due without any notification
        self._verify = verify  # the system's trust store; tests pass a context trusting their own CA
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # The bounded pool of attempts in flight at once (each also bounded in time by its deadline).
        self._slots = asyncio.Semaphore(state.settings.webhook_max_concurrent_attempts)

    def _lease(self) -> timedelta:
        """Long enough for a whole pass: the batch goes out in rounds of the pool's size, each round at most one
        attempt deadline, plus the time to record outcomes. Another deliverer never takes a row mid-attempt."""
        settings = self._state.settings
        rounds = math.ceil(self._batch_size / settings.webhook_max_concurrent_attempts)
        return max(CLAIM_LEASE, timedelta(seconds=rounds * settings.webhook_attempt_timeout_seconds + 30))

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        await stop_background_task(self._task, self._stopping)
        self._task = None

    async def deliver_due(self) -> int:
        """One pass: claim up to a batch of due deliveries, attempt them concurrently, record the outcomes.
        Returns how many were attempted."""
        now = self._state.clock()
        claim = {
            "now": now,
            "lease_until": now + self._lease(),
            "limit": self._batch_size,
            "per_user": self._state.settings.webhook_max_attempts_per_user,
        }
        async with self._state.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_CLAIM_SQL, claim)
            claimed = await cursor.fetchall()
        clients = _ClientsByName(self._state.settings.webhook_attempt_timeout_seconds, self._verify)
        try:
            await asyncio.gather(*(self._attempt_in_pool(row, clients) for row in claimed))
        finally:
            await clients.aclose()
        return len(claimed)

    async def _attempt_in_pool(self, row: dict[str, Any], clients: _ClientsByName) -> None:
        async with self._slots:
            await self._attempt(row, clients)

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

    async def _checked_target(self, url: str) -> tuple[httpx.URL, str]:
        """The URL and the one checked address the attempt connects to (the shared guard in api.outbound)."""
        insecure_ok = self._state.settings.webhook_allow_insecure_urls
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise _Refused("webhook URL refused: it cannot be parsed") from exc
        if target.scheme != "https" and not (insecure_ok and target.scheme == "http"):
            raise _Refused("webhook URL refused: it must be https")
        if not target.host:
            raise _Refused("webhook URL refused: it has no host")
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            address = await resolve_checked(host_name(target), port, allow_private=insecure_ok, resolver=self._resolver)
        except OutboundRefused as exc:
            raise _Refused(f"webhook URL refused: {exc}") from exc
        except UnicodeError as exc:  # a host name IDNA cannot encode never resolves
            raise _Refused("webhook URL refused: the host name is not valid") from exc
        return target, address

    async def _attempt(self, row: dict[str, Any], clients: _ClientsByName) -> None:
        now = self._state.clock()
        code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        deadline = self._state.settings.webhook_attempt_timeout_seconds
        try:
            async with self._state.pool.connection() as conn:
                secret = (await ensure_secret(conn, row["user_id"]))["secret"]
            # Download URLs expire, so they are minted per attempt rather than stored in the queued snapshot.
            resource = await view.with_download_urls(self._state, row["payload"])
            body = json.dumps(resource, separators=(",", ":")).encode()
            timestamp = int(now.timestamp())
            headers = {
                "content-type": "application/json",
                "webhook-id": row["id"],
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, row["id"], timestamp, body),
                "webhook-event": row["event"],
            }
            # One deadline for the whole exchange: httpx's timeouts are per read, which a receiver trickling a
            # byte at a time never trips.
            async with asyncio.timeout(deadline):
                target, address = await self._checked_target(row["url"])
                client = clients.for_name(host_name(target))
                request = pinned_request(client, "POST", target, address, headers=headers, content=body)
                # Streamed: a receiver's response body is of no use and could be huge. A short one is read to its
                # end so the connection can serve the pass's next delivery to this name (httpcore keeps only a
                # connection whose response was read to the end); a longer one is dropped with its connection.
                response = await client.send(request, stream=True)
                try:
                    code = response.status_code
                    retry_after = _retry_after(response)
                    drained = 0
                    async for chunk in response.aiter_raw():
                        drained += len(chunk)
                        if drained > MAX_DRAINED_RESPONSE_BYTES:
                            break
                finally:
                    await response.aclose()
        except _Refused as exc:
            error, permanent = str(exc), True
        except TimeoutError:
            error = f"no answer within the {deadline:g} s attempt deadline"
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
