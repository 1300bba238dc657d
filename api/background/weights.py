"""Keeps the API's view of a mounted weights Volume current.

A Modal container sees a Volume as it was when the container started; models pulled later
(`modal run modal_app.py::download_models`) become visible only after `Volume.reload()` (modal 1.6.4
modal/volume.py:908-935, `_Volume.reload` -> the `VolumeReload` RPC). The API mounts the Volume read-only
(`with_mount_options(read_only=True)` configures only the server-side mount: the client's `_read_only` flag stays
False, volume.py:530-533, and `reload` checks no flag), so a reload has nothing of its own to commit. A reload fails
with RuntimeError while a file on the Volume is open (volume.py:917, 935): the API opens only a hub model's small
manifest, briefly, so such a failure is logged and the next pass tries again.

The reloader runs on an interval and, on demand, before a submit is refused `model_not_installed` (at most once per
`min_gap_seconds`, one reload at a time, so a burst of refusals costs one reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from api.state import stop_background_task

log = logging.getLogger("studio.weights")


class WeightsReloader:
    def __init__(
        self,
        reload: Callable[[], Awaitable[None]],
        interval_seconds: float,
        min_gap_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reload = reload
        self._interval = interval_seconds
        self._min_gap = min_gap_seconds
        self._clock = clock
        self._last: float | None = None  # when the last reload began
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Reload unless one began within `min_gap_seconds`; True when this call reloaded successfully."""
        async with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self._min_gap:
                return False
            self._last = now
            try:
                await self._reload()
            except Exception:
                log.warning("reloading the weights Volume failed; the next pass tries again", exc_info=True)
                return False
            return True

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            if not self._stopping.is_set():
                await self.refresh()

    async def stop(self) -> None:
        await stop_background_task(self._task, self._stopping)
        self._task = None
