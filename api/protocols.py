"""The collaborators `create_app` and the job runner are given, so tests, local mode and Modal wire their own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Protocol
from uuid import UUID

Clock = Callable[[], datetime]  # returns an aware UTC datetime


class Storage(Protocol):
    """Private object storage for inputs and outputs, addressed by `bucket` + `key`."""

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> int:
        """Store a local file; returns its size in bytes. Overwrites (workers may retry)."""
        ...

    async def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        """Download to `dest` and return it."""
        ...

    async def signed_url(self, bucket: str, key: str, expires_in: int, filename: str | None = None) -> str:
        """A URL anyone holding it can download from until it expires."""
        ...

    async def delete(self, bucket: str, keys: list[str]) -> None:
        """Remove objects; missing ones are not an error."""
        ...


class Liveness(Enum):
    """What a dispatcher knows about an execution: the reaper acts only on DEAD."""

    ALIVE = "alive"  # queued, running, or waiting for a retry
    DEAD = "dead"  # ended (returned, raised, timed out, cancelled, expired) or never existed
    UNKNOWN = "unknown"  # could not ask (network, control-plane error): decide on a later pass


class Dispatcher(Protocol):
    """Starts job executions somewhere (local process pool or Modal) and answers whether they are alive."""

    async def dispatch(self, job_id: UUID, task: str) -> str:
        """Start running the job; returns the dispatch id kept on the job (a FunctionCall id on Modal).
        Raises on failure: the caller then releases the hold."""
        ...

    async def is_alive(self, dispatch_id: str) -> Liveness:
        """Whether the execution still runs; UNKNOWN when the backend could not be asked (the reaper then leaves
        the job for a later pass: stale heartbeats and the deadline still end it)."""
        ...

    async def cancel(self, dispatch_id: str, *, terminate: bool = False) -> None:
        """Drop an execution that has not claimed its job yet. A claimed job stops cooperatively at its next
        progress report (`cancel_requested`); only `terminate=True` (the reaper, past the deadline) stops one that
        may be hung, by ending its worker."""
        ...

    async def close(self) -> None: ...
