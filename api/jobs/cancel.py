"""Cancelling a job, as the user asks it: the answer is one of three outcomes, which the route maps to a status.

- `Canceled`: it was queued (no worker had claimed it): settled as canceled now, its hold released.
- `CancelRequested`: it is running: flagged, and the worker ends it as canceled at its next progress report.
- `AlreadyFinal`: nothing to do; final states never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from api.jobs import settle
from api.state import AppState
from db import jobs as db_jobs


@dataclass(frozen=True)
class Canceled:
    job: dict[str, Any]  # the row after the cancel


@dataclass(frozen=True)
class CancelRequested:
    job: dict[str, Any]


@dataclass(frozen=True)
class AlreadyFinal:
    job: dict[str, Any]


class CancelRaced(Exception):
    """The job kept changing state under three attempts (a reaper requeue racing a worker): retry."""


async def cancel_job(state: AppState, job_id: UUID, user_id: UUID) -> Canceled | CancelRequested | AlreadyFinal | None:
    """Cancel the user's job; None when the user has no such job."""
    async with state.pool.connection() as conn:
        # A job only moves forward, except that the reaper may requeue a running job whose worker vanished:
        # retry the two guarded changes a few times rather than misreport that rare race.
        for _ in range(3):
            if await settle.cancel_queued(conn, job_id, user_id):
                row = await db_jobs.get_job(conn, job_id, user_id)
                assert row is not None
                if row["dispatch_id"]:
                    await state.dispatcher.cancel(row["dispatch_id"])  # dispatched, not yet claimed by a worker
                if row["input_ref"]:
                    refs = db_jobs.stored_inputs(row["input_ref"], row["extra_inputs"])
                    await state.storage.delete(state.settings.inputs_bucket, refs)
                    await db_jobs.clear_input_ref(conn, job_id, row["input_ref"])
                return Canceled(row)
            # A running job stops cooperatively: its worker sees the flag at its next progress report. Cancelling its
            # execution instead would interrupt the worker wherever it is (see ModalDispatcher.cancel).
            if await db_jobs.request_cancel_running(conn, job_id, user_id):
                row = await db_jobs.get_job(conn, job_id, user_id)
                assert row is not None
                return CancelRequested(row)
            row = await db_jobs.get_job(conn, job_id, user_id)
            if row is None:
                return None
            if row["status"] in db_jobs.FINAL_STATES:
                return AlreadyFinal(row)
    raise CancelRaced(str(job_id))
