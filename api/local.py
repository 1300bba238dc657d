"""Wiring for one machine: the embedded (or configured) Postgres, migrations, storage and the local worker pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from api.app import AppState
from api.billing import build_stripe_client
from api.database import open_pool, resolve_database_url, secret_key
from api.local_pool import LocalDispatcher
from api.settings import Settings
from api.storage import build_storage
from db.migrate import migrate


@asynccontextmanager
async def local_state(settings: Settings) -> AsyncIterator[AppState]:
    """Start (or attach to) the database, apply migrations, and build every collaborator the app needs."""
    database_url, server = resolve_database_url(settings)
    migrate(database_url)
    pool = await open_pool(database_url, settings)
    signing_key = secret_key(settings)
    dispatcher = LocalDispatcher(settings, database_url)
    state = AppState(
        settings=settings,
        pool=pool,
        database_url=database_url,
        storage=build_storage(settings, signing_key),
        dispatcher=dispatcher,
        signing_key=signing_key,
        stripe=build_stripe_client(settings),
    )
    try:
        yield state
    finally:
        await dispatcher.close()
        await pool.close()
        if server is not None:
            server.cleanup()
