"""`AppState`: every collaborator the API process holds, typed, built by `api.wiring` (local or production)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from api.protocols import Clock, Dispatcher, Storage
from api.ratelimit import FailedAuthLimiter, ReadLimiter, UserSlots
from api.security import TokenVerifier
from api.settings import Settings

if TYPE_CHECKING:
    from stripe import StripeClient


class BackgroundService(Protocol):
    """A loop the API process runs while it serves (webhook deliveries, the local reaper, the events hub)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class WeightsRefresh(Protocol):
    """Brings a mounted weights Volume up to date (`api.background.weights.WeightsReloader`)."""

    async def refresh(self) -> bool: ...


# A job notification (dict: id, user_id, status, progress, stage, seq), or None when it must be re-read (RESYNC).
JobUpdate = dict[str, Any] | None


class JobEvents(Protocol):
    """What routes need from the events hub (`api.background.events.EventsHub`)."""

    keepalive_seconds: float

    def subscribe(self, job_id: UUID) -> AbstractAsyncContextManager[asyncio.Queue[JobUpdate]]: ...

    async def wait_until_final(self, job_id: UUID, timeout: float) -> None: ...


# How often a LISTEN loop wakes to check whether it should stop. Background loops stop cooperatively: cancelling a
# task parked in psycopg's notifies() has been seen to hang its shutdown, so they never rely on it.
STOP_CHECK_SECONDS = 0.5


async def stop_background_task(task: asyncio.Task[None] | None, stopping: asyncio.Event, grace: float = 10.0) -> None:
    """Ask a loop to stop (it checks `stopping`), wait up to `grace` seconds, then cancel it without waiting forever."""
    stopping.set()
    if task is None:
        return
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=grace)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppState:
    settings: Settings
    pool: AsyncConnectionPool
    database_url: str  # for dedicated LISTEN connections (events hub, webhook deliverer): not via a pooler
    storage: Storage
    dispatcher: Dispatcher
    signing_key: str  # HMAC key for local download URLs and local tokens
    clock: Clock = utc_now
    stripe: StripeClient | None = None  # when Stripe is configured
    events: JobEvents | None = None  # the events hub, when the process runs one (api.wiring.background_services)
    # Local mode's reaper loop (api.background.reaper.ReaperLoop) while it runs: a submit with a deadline calls it, so
    # the loop re-plans its next pass for that deadline. None on Modal, whose Cron runs the reaper.
    wake_reaper: Callable[[], None] | None = None
    token_verifier: TokenVerifier | None = None  # built on first use (api.deps); tests put their own in place
    failed_auth: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)
    reads: ReadLimiter = field(default_factory=ReadLimiter)
    weights: WeightsRefresh | None = None  # Modal: reloads the weights Volume the API mounts (None: a local folder)
    event_streams: UserSlots = field(
        default_factory=lambda: UserSlots("event streams", "too_many_streams", "close one (or poll GET /v1/jobs/{id}).")
    )
    url_fetches: UserSlots = field(
        default_factory=lambda: UserSlots(
            "input URL downloads", "too_many_url_fetches", "wait for one to finish, or upload the file."
        )
    )
