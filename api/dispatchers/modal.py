"""Dispatch to Modal: each task's GPU worker class is spawned with `.spawn.aio`, tracked by its FunctionCall id.

The worker classes live in modal_app.py and are handed in (this module never imports modal_app), so tests can
pass fakes that stand at the same boundary: `.run.spawn.aio(job_id)` returning an object with `object_id`, and
`FunctionCall.from_id(id)` with `.get.aio(timeout=0)` and `.cancel.aio()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import modal
import modal.exception

log = logging.getLogger("studio.dispatch")


class ModalDispatcher:
    def __init__(self, workers: Mapping[str, Any], function_call_from_id: Callable[[str], Any] | None = None) -> None:
        self._workers = workers  # task -> modal.Cls whose instances have a `run(job_id)` method
        self._from_id = function_call_from_id or modal.FunctionCall.from_id

    async def dispatch(self, job_id: UUID, task: str) -> str:
        # Only the job id travels: inputs over a few KiB would be uploaded as blobs, and the worker reads the job.
        call = await self._workers[task]().run.spawn.aio(str(job_id))
        return call.object_id

    async def is_alive(self, dispatch_id: str) -> bool:
        try:
            await self._from_id(dispatch_id).get.aio(timeout=0)
        except TimeoutError:
            return True  # still running (or waiting for a container)
        except modal.exception.OutputExpiredError:
            return False
        except Exception:  # the call raised or was cancelled: it is not running any more
            log.info("function call %s has ended with an error", dispatch_id, exc_info=True)
            return False
        return False  # it returned

    async def cancel(self, dispatch_id: str) -> None:
        await self._from_id(dispatch_id).cancel.aio()

    async def close(self) -> None:
        """Nothing to release: FunctionCalls live on Modal's side."""
