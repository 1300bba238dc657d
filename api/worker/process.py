"""The worker process entry: what a local pool process (`api.dispatchers.local`) or a Modal function runs.

Never imports the web stack (FastAPI, the routes): a GPU container loads only what running a job needs. The
import-linter contracts in pyproject.toml and tests/test_worker_imports.py keep it so.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from psycopg import AsyncConnection

from api.database import connect
from api.settings import Settings
from api.storage import build_storage
from api.worker.runner import WorkerContext, run_job

_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_contexts: dict[tuple[str, str], WorkerContext] = {}


def worker_context(settings: Settings, database_url: str, signing_key: str) -> WorkerContext:
    async def connect_db() -> AsyncConnection:
        return await connect(database_url, settings)

    return WorkerContext(settings=settings, connect=connect_db, storage=build_storage(settings, signing_key))


def run_in_worker(job_id: str, database_url: str, settings: Settings, signing_key: str) -> str:
    """Entry point in a pool process: one event loop and one context (engines included) per process, reused."""
    global _worker_loop
    if _worker_loop is None:
        # One loop for the process's life: storage clients keep connections bound to the loop that made them.
        _worker_loop = asyncio.new_event_loop()
    key = (database_url, settings.model_dump_json())
    if key not in _worker_contexts:
        _worker_contexts[key] = worker_context(settings, database_url, signing_key)
    return _worker_loop.run_until_complete(run_job(_worker_contexts[key], UUID(job_id)))
