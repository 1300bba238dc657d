"""`create_app`: the FastAPI factory. Collaborators are injected so tests, local mode and Modal each wire their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool

from api.errors import install_error_handlers
from api.protocols import Clock, Dispatcher, Storage
from api.settings import Settings


class BackgroundService(Protocol):
    """A loop the API process runs while it serves (webhook deliveries, the local reaper, the events hub)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


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
    stripe: Any | None = None  # a stripe.StripeClient when Stripe is configured
    services: dict[str, Any] = field(default_factory=dict)  # named background services, e.g. "events"


def get_state(request: Request) -> AppState:
    return request.app.state.studio


def create_app(state: AppState, background: list[BackgroundService] | None = None) -> FastAPI:
    from api import auth, billing, events, jobs, storage, studio, webhooks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for service in background or []:
            await service.start()
        try:
            yield
        finally:
            for service in reversed(background or []):
                await service.stop()

    app = FastAPI(
        title="Audio Studio API",
        version="1.0.0",
        description="GPU audio AI: stem separation, speech enhancement, transcription, audio-to-MIDI and "
        "text-to-audio. Errors are application/problem+json with a stable `code`.",
        lifespan=lifespan,
    )
    app.state.studio = state
    install_error_handlers(app)
    for router in (auth.router, jobs.router, events.router, billing.router, webhooks.router, storage.router):
        app.include_router(router)
    app.include_router(studio.build_router(state.settings))
    return app
