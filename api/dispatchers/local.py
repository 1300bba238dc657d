"""Local mode's dispatcher: a small supervisor for worker processes that claim jobs from Postgres themselves.

Dispatching a job is only marking it ready (`dispatch_id = 'local'`, set by api.jobs.dispatch under the per-user cap)
and the NOTIFY that migration 0006 sends on commit, so a dispatch cannot fail because a worker died. The
supervisor starts `settings.local_workers` processes (spawn context: no torch or CUDA state is forked), restarts
any that die, and wakes the reaper loop when a worker ends a job (a slot is free) or dies (its job is lost).

Dispatch ids and liveness:
- `local`: handed to the local workers, not yet claimed. Always alive: the queue is the table itself, so any
  worker of this or a later API process claims it; the supervisor keeps workers running.
- `local:<pid>:<token>`: claimed by the worker process `pid` (`token` tells its incarnations apart). Alive while
  that process is one of this supervisor's live workers; a worker of ours that died is dead at once (the reaper
  fails its job as `worker_lost` without waiting for the deadline); a worker of another or an earlier API process
  is judged by its pid (an orphan finishing its job after its API was killed keeps it). The reaper's heartbeat
  check backs this up for a reused pid.
Cancelling touches no process: a queued job is made final in the database (workers only claim queued jobs) and a
running one stops cooperatively when its heartbeat reads `cancel_requested`.

The watchdog: a worker reports each claim with the attempt's time limit (`Claimed`). One still on that job past
the limit has a hung engine (its heartbeat would keep the job "running" until the 2 h deadline, and with one worker
the queue would wait as long): the supervisor kills it, fails the job `engine_timeout` (hold released, input
deleted) while the dead worker still counts as alive (so the reaper cannot fail it `worker_lost` first), then
replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from uuid import UUID

from api.database import secret_key
from api.protocols import Liveness
from api.settings import Settings
from api.worker.local import LOCAL_READY, Claimed, parse_worker_dispatch_id, worker_main
from api.worker.process import worker_context
from api.worker.runner import WorkerContext, fail_timed_out
from db.embedded import pid_is_running

log = logging.getLogger("studio.dispatch")

MONITOR_TICK_SECONDS = 1.0
REMEMBERED_DEAD = 4096  # tokens of dead workers kept to answer is_alive for jobs they held
QUICK_DEATH_SECONDS = 5.0  # a worker dying this soon after start is crashing on start: restart with backoff
MAX_RESTART_DELAY_SECONDS = 10.0


@dataclass
class _Worker:
    token: str
    process: BaseProcess
    reports: Connection  # the worker sends `Claimed` when it takes a job, then the job's final state
    started: float = field(default_factory=time.monotonic)
    running: Claimed | None = None  # the job it is on, if any
    time_limit: float = 0.0  # time.monotonic() past which that job counts as hung


class LocalDispatcher:
    """The supervisor of the local worker processes, behind the `Dispatcher` protocol.

    Workers start at the first dispatch or liveness question (both mean there is local work), so an API or a test
    that never runs a job pays nothing for them.
    """

    def __init__(self, settings: Settings, database_url: str) -> None:
        self._settings = settings
        self._database_url = database_url
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._quick_deaths = 0
        self._context_for_settling: WorkerContext | None = None  # the watchdog's storage and database access
        self.restarts = 0  # workers started to replace dead ones

    def on_finished(self, callback: Callable[[], None]) -> None:
        """Call `callback` in the event loop whenever a worker ends a job or dies (dispatch or reap next)."""
        self._listeners.append(callback)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [worker.process.pid for worker in self._workers.values() if worker.process.pid is not None]

    async def dispatch(self, job_id: UUID, task: str) -> str:
        self._ensure_started()
        return LOCAL_READY

    async def is_alive(self, dispatch_id: str) -> Liveness:
        self._ensure_started()
        if dispatch_id == LOCAL_READY:
            return Liveness.ALIVE
        claimed_by = parse_worker_dispatch_id(dispatch_id)
        if claimed_by is None:
            return (
                Liveness.DEAD
            )  # not a dispatch id this dispatcher hands out (e.g. an executor id from an older version)
        pid, token = claimed_by
        with self._lock:
            if token in self._workers:
                return Liveness.ALIVE
            if token in self._dead:
                return Liveness.DEAD
        return Liveness.ALIVE if pid_is_running(pid) else Liveness.DEAD

    async def cancel(self, dispatch_id: str, *, terminate: bool = False) -> None:
        """Nothing to do: see the module docstring."""

    def _ensure_started(self) -> None:
        if self._monitor is not None or self._stopping.is_set():
            return
        self._loop = asyncio.get_running_loop()
        with self._lock:
            for _ in range(max(1, self._settings.local_workers)):
                self._start_worker()
        self._monitor = threading.Thread(target=self._supervise, name="studio-local-pool", daemon=True)
        self._monitor.start()

    def _start_worker(self) -> None:
        """Start one worker process (the caller holds the lock)."""
        token = uuid.uuid4().hex[:12]
        reports, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self._settings, self._database_url, secret_key(self._settings), token, child_end, os.getpid()),
            name=f"studio-worker-{token}",
            daemon=True,  # multiprocessing terminates daemonic workers when the API process exits normally
        )
        process.start()
        child_end.close()  # only the child writes: its death then shows as EOF here
        self._workers[token] = _Worker(token, process, reports)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                workers = list(self._workers.values())
            waitables: list[object] = [worker.process.sentinel for worker in workers]
            waitables += [worker.reports for worker in workers]
            ready = set(wait(waitables, timeout=MONITOR_TICK_SECONDS))  # type: ignore[arg-type]
            if self._stopping.is_set():
                return
            woke = False
            for worker in workers:
                if worker.process.sentinel in ready:
                    self._replace(worker)
                    woke = True
                    continue
                if worker.reports in ready:
                    woke = self._read_reports(worker) or woke
                if worker.running is not None and time.monotonic() > worker.time_limit:
                    self._stop_hung(worker)
                    woke = True  # either way its job has ended: a slot is free
            if woke:
                self._wake_listeners()

    def _read_reports(self, worker: _Worker) -> bool:
        """Take in every message the worker has sent; True when it ended a job (a slot is free)."""
        ended = False
        try:
            while worker.reports.poll():
                report = worker.reports.recv()
                if isinstance(report, Claimed):
                    worker.running, worker.time_limit = report, time.monotonic() + report.seconds
                else:
                    worker.running, ended = None, True
        except (EOFError, OSError):
            pass  # it is exiting: its sentinel fires next
        return ended

    def _stop_hung(self, worker: _Worker) -> None:
        """Kill a worker past its job's time limit, fail that job `engine_timeout`, start another worker; nothing
        when a report that came in meanwhile says the job ended."""
        self._read_reports(worker)
        claimed = worker.running
        if claimed is None:
            return
        log.error(
            "local worker %s (pid %s): job %s ran past its %.0f s limit; killing the worker",
            worker.token,
            worker.process.pid,
            claimed.job_id,
            claimed.seconds,
        )
        worker.process.kill()
        worker.process.join()
        try:
            # Still in self._workers, so is_alive answers ALIVE and the reaper leaves the job to this settlement.
            asyncio.run(fail_timed_out(self._settle_context(), claimed.job_id, claimed.attempt))
        except Exception:
            log.exception("could not settle timed-out job %s; the reaper fails it as lost", claimed.job_id)
        worker.running = None
        self._replace(worker)

    def _settle_context(self) -> WorkerContext:
        if self._context_for_settling is None:
            self._context_for_settling = worker_context(self._settings, self._database_url, secret_key(self._settings))
        return self._context_for_settling

    def _replace(self, worker: _Worker) -> None:
        worker.process.join()
        worker.reports.close()
        lived = time.monotonic() - worker.started
        log.warning(
            "local worker %s (pid %s) died with exit code %s after %.1f s; starting another",
            worker.token,
            worker.process.pid,
            worker.process.exitcode,
            lived,
        )
        # Only an exit of its own (a Python error, exit code > 0) soon after start counts as crashing on start; a
        # worker killed by a signal (OOM killer, SIGKILL) is replaced at once.
        crashed_on_start = lived < QUICK_DEATH_SECONDS and (worker.process.exitcode or 0) > 0
        self._quick_deaths = self._quick_deaths + 1 if crashed_on_start else 0
        if self._quick_deaths > 1:
            # Crashing on start (a broken install, an unreachable database): do not spin.
            self._stopping.wait(min(MAX_RESTART_DELAY_SECONDS, 0.25 * 2**self._quick_deaths))
        with self._lock:
            self._workers.pop(worker.token, None)
            self._dead[worker.token] = None
            while len(self._dead) > REMEMBERED_DEAD:
                self._dead.popitem(last=False)
            if not self._stopping.is_set():
                self._start_worker()
                self.restarts += 1

    def _wake_listeners(self) -> None:
        loop = self._loop
        if loop is None:
            return
        for callback in self._listeners:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:
                return  # the event loop is closed: the API is shutting down

    async def close(self) -> None:
        """Stop the workers. A job one of them was running is settled by the reaper of the next start (its
        worker's pid is gone), or re-run when the job was still queued."""
        self._stopping.set()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            await asyncio.to_thread(monitor.join, MONITOR_TICK_SECONDS * 5)
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.process.terminate()
        for worker in workers:
            await asyncio.to_thread(worker.process.join, 10)
            worker.reports.close()
