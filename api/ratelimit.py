"""Fair-use limits.

- The per-user request-rate limit: fixed windows counted in Postgres (`rate_limit_windows`), so the limit holds
  however many API processes serve the user. One upsert per request; a window's first request also drops the
  user's finished windows, which keeps the table at about one row per active user. Costly requests count more.
  Only requests that can cost money (anything but GET/HEAD) are counted there.
- Reads (GET/HEAD) per user (`ReadLimiter`), in the process's memory with the same limit: a read costs no money,
  and a Postgres write per read was most of a read's cost. Each API container enforces it on its own, so a user
  spread over N containers may read up to N times the limit.
- Failed authentication per client address (`FailedAuthLimiter`), in the process's memory: it exists to spare the
  database, so it must not cost a query itself.
- Open event streams and input URL fetches per user (`UserSlots`), per process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from psycopg import AsyncConnection

from api.errors import Problem

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    requests: int  # counted in this window, this request included
    retry_after: int  # whole seconds until the window ends


def window_start(now: datetime, window_seconds: int = WINDOW_SECONDS) -> datetime:
    return datetime.fromtimestamp(math.floor(now.timestamp() / window_seconds) * window_seconds, UTC)


async def hit(
    conn: AsyncConnection,
    user_id: UUID,
    *,
    now: datetime,
    limit: int,
    window_seconds: int = WINDOW_SECONDS,
    cost: int = 1,
) -> RateDecision:
    """Count `cost` requests of `user_id` in the window holding `now` and say whether it is within `limit`."""
    start = window_start(now, window_seconds)
    cursor = await conn.execute(
        "INSERT INTO rate_limit_windows (user_id, window_start, requests) VALUES (%s, %s, %s)"
        " ON CONFLICT (user_id, window_start) DO UPDATE SET requests = rate_limit_windows.requests + EXCLUDED.requests"
        " RETURNING requests",
        (user_id, start, cost),
    )
    row = await cursor.fetchone()
    assert row is not None  # an upsert with RETURNING always yields its row
    requests = row[0]
    if requests == cost:
        await conn.execute("DELETE FROM rate_limit_windows WHERE user_id = %s AND window_start < %s", (user_id, start))
    retry_after = max(1, math.ceil(start.timestamp() + window_seconds - now.timestamp()))
    return RateDecision(allowed=requests <= limit, limit=limit, requests=requests, retry_after=retry_after)


async def enforce(
    conn: AsyncConnection,
    user_id: UUID,
    *,
    now: datetime,
    limit: int,
    window_seconds: int = WINDOW_SECONDS,
    cost: int = 1,
) -> None:
    """Count the request (as `cost` requests); raise a 429 problem with Retry-After past the limit. A limit <= 0
    turns the limit off."""
    if limit <= 0:
        return
    decision = await hit(conn, user_id, now=now, limit=limit, window_seconds=window_seconds, cost=cost)
    if not decision.allowed:
        raise _rate_limited(limit, window_seconds, decision.retry_after)


READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass
class ReadLimiter:
    """Reads per user in fixed windows, in memory (one process's view); bounded like `FailedAuthLimiter`."""

    window: datetime | None = None
    reads: Counter[UUID] = field(default_factory=Counter)

    def enforce(self, user_id: UUID, *, now: datetime, limit: int, window_seconds: int = WINDOW_SECONDS) -> None:
        """Count a read; raise the same 429 problem as `enforce` past `limit` (limit <= 0: off)."""
        if limit <= 0:
            return
        start = window_start(now, window_seconds)
        if start != self.window:
            self.window, self.reads = start, Counter()
        if user_id not in self.reads and len(self.reads) >= MAX_TRACKED_ADDRESSES:
            return  # a full table forgets new users rather than grow; reads cost no money
        self.reads[user_id] += 1
        if self.reads[user_id] > limit:
            retry_after = max(1, math.ceil(start.timestamp() + window_seconds - now.timestamp()))
            raise _rate_limited(limit, window_seconds, retry_after)


def _rate_limited(limit: int, window_seconds: int, retry_after: int) -> Problem:
    return Problem(
        429,
        "rate_limited",
        "Too many requests",
        f"At most {limit} requests per {window_seconds} seconds; retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
        limit=limit,
        retry_after=retry_after,
    )


# Distinct addresses remembered per window. Once the table is full, addresses not in it are not remembered (a flood
# of source addresses cannot grow memory); while it is full they authenticate through the throttle, like an address
# past its limit.
MAX_TRACKED_ADDRESSES = 65_536


def address_key(host: str | None) -> str:
    """An IPv4 address, or an IPv6 address's /64 (one host usually holds a whole /64)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class FailedAuthLimiter:
    """Failed authentications per client address in fixed windows, in memory (one process's view).

    It never refuses a valid credential, nor an address that has not failed itself: an address past its limit (or
    any address while the table is full) still has its API keys looked up, but through `throttle`, one lookup at a
    time for the whole process, so guessing keys costs the database at most one query in flight (tokens are checked
    in memory, unthrottled). Only a failure from an address past its own limit is answered 429 instead of 401."""

    window: datetime | None = None
    failures: Counter[str] = field(default_factory=Counter)
    throttle: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    def _roll(self, now: datetime, window_seconds: int) -> None:
        start = window_start(now, window_seconds)
        if start != self.window:
            self.window, self.failures = start, Counter()

    def limited(self, host: str | None, *, now: datetime, limit: int, window_seconds: int = WINDOW_SECONDS) -> bool:
        """Whether this address must authenticate through the throttle (limit <= 0: never)."""
        if limit <= 0:
            return False
        self._roll(now, window_seconds)
        key = address_key(host)
        if key in self.failures:
            return self.failures[key] >= limit
        return len(self.failures) >= MAX_TRACKED_ADDRESSES

    def record(
        self, host: str | None, *, now: datetime, limit: int, window_seconds: int = WINDOW_SECONDS
    ) -> Problem | None:
        """Count a failure; the 429 to answer instead of the 401 when the address is now past `limit`."""
        self._roll(now, window_seconds)
        key = address_key(host)
        if key not in self.failures and len(self.failures) >= MAX_TRACKED_ADDRESSES:
            return None
        self.failures[key] += 1
        if limit <= 0 or self.failures[key] <= limit:
            return None
        assert self.window is not None
        retry_after = max(1, math.ceil(self.window.timestamp() + window_seconds - now.timestamp()))
        return Problem(
            429,
            "too_many_failed_auth",
            "Too many failed sign-ins",
            f"Too many failed authentications from your address; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


@dataclass
class UserSlots:
    """Things each user holds at once in this process (an event stream holds a connection, a queue and a task; an
    input URL fetch a connection, a DNS lookup and a temp file): past `limit`, 429 `code`."""

    what: str  # e.g. "event streams", in the refusal's wording
    code: str
    hint: str  # what to do instead, after the refusal
    counts: Counter[UUID] = field(default_factory=Counter)

    def open(self, user_id: UUID) -> int:
        return self.counts.get(user_id, 0)

    def acquire(self, user_id: UUID, limit: int) -> None:
        """Take a slot, or 429 when the user already holds `limit` (limit <= 0: unlimited)."""
        if 0 < limit <= self.open(user_id):
            raise Problem(
                429,
                self.code,
                f"Too many {self.what} at once",
                f"At most {limit} {self.what} at once; {self.hint}",
                headers={"Retry-After": "5"},
                limit=limit,
            )
        self.counts[user_id] += 1

    def release(self, user_id: UUID) -> None:
        self.counts[user_id] -= 1
        if self.counts[user_id] <= 0:
            del self.counts[user_id]

    @contextmanager
    def held(self, user_id: UUID, limit: int) -> Iterator[None]:
        self.acquire(user_id, limit)
        try:
            yield
        finally:
            self.release(user_id)
