"""The collaborators `create_app` and the job runner are given, so tests, local mode and Modal wire their own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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


class Dispatcher(Protocol):
    """Starts job executions somewhere (local process pool or Modal) and answers whether they are alive."""

    async def dispatch(self, job_id: UUID, task: str) -> str:
        """Start running the job; returns the dispatch id kept on the job (a FunctionCall id on Modal).
        Raises on failure: the caller then releases the hold."""
        ...

    async def is_alive(self, dispatch_id: str) -> bool:
        """False once the execution has ended or is unknown (the reaper fails jobs whose worker is gone)."""
        ...

    async def cancel(self, dispatch_id: str) -> None:
        """Best-effort stop of a running execution."""
        ...

    async def close(self) -> None: ...
