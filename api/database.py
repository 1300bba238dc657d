"""Connection pool and the resolution of which Postgres to use (DATABASE_URL, else the embedded server)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings
from db import embedded


def resolve_database_url(settings: Settings) -> tuple[str, Any | None]:
    """The URL to use, and the embedded server handle when we started one (None for DATABASE_URL)."""
    if settings.database_url:
        return settings.database_url, None
    server = embedded.start(settings.state_dir / "postgres")
    return embedded.database_url(server), server


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    # Supabase's transaction-mode pooler cannot hold prepared statements across transactions.
    return {"autocommit": True, "prepare_threshold": None if settings.database_pooler else 5}


async def open_pool(
    database_url: str, settings: Settings, *, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, open=False, kwargs=connection_kwargs(settings)
    )
    await pool.open(wait=True)
    return pool


async def connect(database_url: str, settings: Settings) -> AsyncConnection:
    """A single connection (workers and LISTEN loops)."""
    return await AsyncConnection.connect(database_url, **connection_kwargs(settings))


def secret_key(settings: Settings) -> str:
    """The local signing secret: from the environment, else generated once into the state folder."""
    if settings.secret_key:
        return settings.secret_key
    path: Path = settings.state_dir / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()
