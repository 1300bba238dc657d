"""The worker process entry: what a local pool process (`api.dispatchers.local`) or a Modal function runs.

Never imports the web stack (FastAPI, the routes): a GPU container loads only what running a job needs. The
import-linter contracts in pyproject.toml and tests/test_worker_imports.py keep it so.
"""

from __future__ import annotations

from psycopg import AsyncConnection

from api.database import connect
from api.settings import Settings
from api.storage import build_storage
from api.worker.runner import WorkerContext


def worker_context(settings: Settings, database_url: str, signing_key: str) -> WorkerContext:
    async def connect_db() -> AsyncConnection:
        return await connect(database_url, settings)

    return WorkerContext(settings=settings, connect=connect_db, storage=build_storage(settings, signing_key))
