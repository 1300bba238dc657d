"""Wiring, side by side: `local_state` (one machine) and `production_state` (Modal), the background services an
API process runs, and the local-mode user setup. The only place that chooses implementations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import stripe
from psycopg_pool import AsyncConnectionPool

from api.background.events import EventsHub
from api.background.reaper import ReaperLoop
from api.background.webhooks import WebhookDeliverer
from api.database import connection_kwargs, open_pool, resolve_database_url, secret_key
from api.dispatchers.local import LocalDispatcher
from api.dispatchers.modal import ModalDispatcher
from api.settings import Settings
from api.state import AppState, BackgroundService
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


def production_state(workers: Mapping[str, Any]) -> AppState:
    """The API's collaborators on Modal: Supabase Postgres and Storage, Stripe, and the Modal dispatcher over
    `workers` (task -> Modal worker class). The pool is not opened: open it in the event loop that uses it."""
    settings = Settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set: create the studio-database secret (README, Deploy to Modal)")
    signing_key = secret_key(settings)
    pool = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=10, open=False, kwargs=connection_kwargs(settings)
    )
    return AppState(
        settings=settings,
        pool=pool,
        # LISTEN (events hub, webhook deliverer) needs a session connection; the pool may use the transaction pooler.
        database_url=settings.database_listen_url or settings.database_url,
        storage=build_storage(settings, signing_key),
        dispatcher=ModalDispatcher(workers),
        signing_key=signing_key,
        stripe=build_stripe_client(settings),
    )


def build_stripe_client(settings: Settings) -> stripe.StripeClient | None:
    """The Stripe client, or None when billing is not configured (SPEC section 5: Stripe disabled unless keys set)."""
    if not settings.stripe_secret_key:
        return None
    base_addresses: dict[str, str] = {"api": settings.stripe_api_base} if settings.stripe_api_base else {}
    # httpx for the async calls the API makes; retries are safe because every create carries an idempotency key.
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses=base_addresses,  # type: ignore[arg-type]
        http_client=stripe.HTTPXClient(timeout=20),
        max_network_retries=2,
    )


def background_services(state: AppState) -> list[BackgroundService]:
    """The loops an API process runs beside its routes; the events hub is also put on `state.events`."""
    hub = EventsHub(state)
    state.events = hub
    services: list[BackgroundService] = [hub, WebhookDeliverer(state)]
    if state.settings.dispatcher == "local":
        # On Modal the reaper and retention run as Cron functions instead (modal_app.py).
        services.append(ReaperLoop(state))
    return services
