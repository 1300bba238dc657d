"""Helpers for the runner, dispatch and reaper tests: users, jobs with real holds and real input files."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import numpy as np
import psycopg
import soundfile as sf
from psycopg.types.json import Jsonb

from api.protocols import Liveness, Storage
from api.settings import Settings
from db import ledger


def write_tone(path: Path, seconds: float = 2.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    signal = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, signal.astype(np.float32), rate)
    return path


async def make_user(conn: psycopg.AsyncConnection, credits: int = 100) -> UUID:
    user_id = uuid4()
    await conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{user_id}@example.com"))
    await ledger.ensure_account(conn, user_id, welcome_grant=credits)
    return user_id


async def make_job(
    conn: psycopg.AsyncConnection,
    storage: Storage,
    settings: Settings,
    user_id: UUID,
    input_file: Path | None,
    *,
    task: str = "enhance",
    params: dict[str, Any] | None = None,
    cost: int = 10,
    deadline: datetime | None = None,
    webhook_url: str | None = None,
    duration_s: float | None = 2.0,
) -> UUID:
    """A queued job as the submit endpoint leaves it: row, hold and stored input, committed together.
    `duration_s` is what the submit's probe measured (and priced); None for a row that lacks it."""
    job_id = uuid4()
    input_ref = f"{user_id}/{job_id}/input{input_file.suffix}" if input_file else None
    if input_file is not None and input_ref is not None:
        await storage.put_file(settings.inputs_bucket, input_ref, input_file, "audio/wav")
    deadline = deadline or datetime.now(UTC) + timedelta(hours=2)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO jobs (id, user_id, task, params, model_key, cost, input_ref, input_meta, deadline_at,"
            " webhook_url) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                job_id,
                user_id,
                task,
                Jsonb(params or {}),
                "builtin",
                cost,
                input_ref,
                Jsonb({} if duration_s is None else {"duration_s": duration_s}),
                deadline,
                webhook_url,
            ),
        )
        await ledger.hold(conn, user_id, job_id, cost, deadline)
    return job_id


async def job_row(conn: psycopg.AsyncConnection, job_id: UUID) -> dict[str, Any]:
    cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
    await cursor.execute("SELECT *, status::text AS status FROM jobs WHERE id = %s", (job_id,))
    row = await cursor.fetchone()
    assert row is not None
    return row


async def ledger_kinds(conn: psycopg.AsyncConnection, job_id: UUID) -> list[str]:
    cursor = await conn.execute("SELECT kind::text FROM ledger_entries WHERE job_id = %s ORDER BY id", (job_id,))
    return [row[0] for row in await cursor.fetchall()]


async def wait_until(condition: Callable[[], Awaitable[bool]], *, timeout: float = 60.0, what: str = "") -> None:
    """Poll a real condition (a database state) until it holds, failing after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)


async def job_status(conn: psycopg.AsyncConnection, job_id: UUID) -> str:
    row = await (await conn.execute("SELECT status::text FROM jobs WHERE id = %s", (job_id,))).fetchone()
    assert row is not None
    return row[0]


class RefusingDispatcher:
    """Stands for a dispatcher whose backend (Modal) is down: an external service failing at its boundary."""

    async def dispatch(self, job_id: UUID, task: str) -> str:
        raise ConnectionError("modal is unreachable")

    async def is_alive(self, dispatch_id: str) -> Liveness:
        return Liveness.DEAD

    async def cancel(self, dispatch_id: str, *, terminate: bool = False) -> None:
        return None

    async def close(self) -> None:
        return None
