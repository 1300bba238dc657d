"""The local worker pool: spawned processes running `api.worker.process.run_in_worker` (dispatcher for one machine)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from uuid import UUID, uuid4

from api.database import secret_key
from api.protocols import Liveness
from api.settings import Settings
from api.worker.process import run_in_worker

log = logging.getLogger("studio.dispatch")


class LocalDispatcher:
    """A pool of worker processes (spawned, so no torch/CUDA state is forked) that run `api.worker.runner.run_job`.

    Each worker process keeps its engines across jobs. The pool starts on the first dispatch, so an API or a test
    that never runs a job pays nothing for it. Dispatch ids live in this process only: after a restart they are
    unknown, `is_alive` says False and the reaper requeues or fails the job.
    """

    def __init__(self, settings: Settings, database_url: str) -> None:
        self._settings = settings
        self._database_url = database_url
        self._pool: ProcessPoolExecutor | None = None
        self._runs: dict[str, Future[str]] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_finished(self, callback: Callable[[], None]) -> None:
        """Call `callback` in the event loop whenever a run ends (a slot is free: dispatch the next job)."""
        self._listeners.append(callback)

    def _executor(self) -> ProcessPoolExecutor:
        # A worker killed by the OS breaks the whole executor: start a fresh one rather than refusing all jobs.
        if self._pool is None or getattr(self._pool, "_broken", False):
            self._pool = ProcessPoolExecutor(
                max_workers=max(1, self._settings.local_workers), mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def dispatch(self, job_id: UUID, task: str) -> str:
        dispatch_id = f"local:{uuid4()}"
        future = self._executor().submit(
            run_in_worker, str(job_id), self._database_url, self._settings, secret_key(self._settings)
        )
        self._runs[dispatch_id] = future
        loop = asyncio.get_running_loop()

        def done(finished: Future[str]) -> None:
            try:
                loop.call_soon_threadsafe(self._finished, dispatch_id, finished)
            except RuntimeError:
                pass  # the event loop is closed: the API is shutting down

        future.add_done_callback(done)
        return dispatch_id

    def _finished(self, dispatch_id: str, future: Future[str]) -> None:
        self._runs.pop(dispatch_id, None)
        if not future.cancelled() and future.exception() is not None:
            log.error("local run %s ended abnormally: %r", dispatch_id, future.exception())
        for callback in self._listeners:
            callback()

    async def is_alive(self, dispatch_id: str) -> Liveness:
        future = self._runs.get(dispatch_id)
        return Liveness.ALIVE if future is not None and not future.done() else Liveness.DEAD

    async def cancel(self, dispatch_id: str, *, terminate: bool = False) -> None:
        # Only a run still waiting for a worker can be dropped; a running one stops at its next progress
        # report, when the runner sees cancel_requested.
        future = self._runs.get(dispatch_id)
        if future is not None:
            future.cancel()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        # Jobs still running are abandoned on purpose: the reaper requeues or fails them on the next start.
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.join, 10)
