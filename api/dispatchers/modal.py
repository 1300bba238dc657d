"""Dispatch to Modal: each task's GPU worker class is spawned with `.spawn.aio`, tracked by its FunctionCall id.

The worker classes live in modal_app.py and are handed in (this module never imports modal_app), so tests can
pass fakes that stand at the same boundary: `.run.spawn.aio(job_id)` returning an object with `object_id`, and
`FunctionCall.from_id(id)` with `.get.aio(timeout=0)` and `.cancel.aio(terminate_containers=...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import grpclib
import modal
import modal.exception
from modal._functions import _Invocation

from api.protocols import Liveness

log = logging.getLogger("studio.dispatch")

# `FunctionCall.get(timeout=0)` (modal/_functions.py `_FunctionCall.get` -> `_Invocation.poll_function`) asks the
# control plane for the call's output. When that request itself fails, nothing is known about the call:
# `_retry_transient_errors` (modal/_utils/grpc_utils.py) ends in modal.exception.ConnectionError (OSError, asyncio
# timeouts, HTTP/2 errors) or a modal TimeoutError (`RetryTimeoutError`, total deadline spent), and server statuses
# map to the `_GRPCErrorWrapper` classes of modal/_grpc_client.py `_STATUS_TO_EXCEPTION` (ServiceError for
# UNAVAILABLE/UNKNOWN/CANCELLED/DEADLINE_EXCEEDED, ResourceExhaustedError, InternalError, AuthError, ...), all of them
# grpclib.GRPCError subclasses. NotFoundError is an answer: the call does not exist.
# No unfinished inputs and no output kept; the call timed out; no such call.
_ENDED_WITHOUT_OUTPUT = (
    modal.exception.OutputExpiredError,
    modal.exception.FunctionTimeoutError,
    modal.exception.NotFoundError,
)
_COULD_NOT_ASK: tuple[type[BaseException], ...] = (
    grpclib.GRPCError,
    modal.exception.ConnectionError,
    modal.exception.ClientClosed,
    modal.exception.TimeoutError,  # after the call's own ends (FunctionTimeoutError, OutputExpiredError) below
    OSError,  # after the builtin TimeoutError (an OSError) below
)


def _no_output_yet(exc: TimeoutError) -> bool:
    """Whether this builtin TimeoutError is modal's "no output yet" answer rather than the worker's own.

    modal 1.6.4 raises a bare `TimeoutError()` in `_Invocation.poll_function` (modal/_functions.py:358) when the
    call has unfinished inputs and no output. A TimeoutError the worker's code raised comes back as the call's output
    (status FAILURE, the pickled exception) and is re-raised by `_process_result` (modal/_utils/function_utils.py:572,
    `raise exc_with_hints(exc)`), its innermost frame `_process_result` or, with a remote traceback
    (`append_modal_tb`), the worker's own code. synchronicity trims only outer frames, so the innermost frame says
    which one this is.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code is _Invocation.poll_function.__code__


class ModalDispatcher:
    def __init__(self, workers: Mapping[str, Any], function_call_from_id: Callable[[str], Any] | None = None) -> None:
        self._workers = workers  # task -> modal.Cls whose instances have a `run(job_id)` method
        self._from_id = function_call_from_id or modal.FunctionCall.from_id

    async def dispatch(self, job_id: UUID, task: str) -> str:
        # Only the job id travels: inputs over a few KiB would be uploaded as blobs, and the worker reads the job.
        call = await self._workers[task]().run.spawn.aio(str(job_id))
        return call.object_id

    async def is_alive(self, dispatch_id: str) -> Liveness:
        """What each outcome of `get(timeout=0)` means, read from modal 1.6.4's `_Invocation.poll_function` and
        `_process_result` (modal/_utils/function_utils.py)."""
        try:
            await self._from_id(dispatch_id).get.aio(timeout=0)
        except TimeoutError as exc:
            if _no_output_yet(exc):
                return Liveness.ALIVE  # queued, running, or awaiting a retry
            log.info("function call %s has ended with the worker's TimeoutError", dispatch_id, exc_info=True)
            return Liveness.DEAD
        except _ENDED_WITHOUT_OUTPUT:
            return Liveness.DEAD
        except _COULD_NOT_ASK:
            log.warning("could not ask Modal about function call %s; deciding next pass", dispatch_id, exc_info=True)
            return Liveness.UNKNOWN
        except Exception:
            # The call ended with an error: the remote exception re-raised, ExecutionError when it cannot be rebuilt
            # here, InternalFailure (crash), RemoteError (cancelled). A remote exception that happens to be one of
            # the classes above reads as UNKNOWN: the stale-heartbeat check and the deadline still end that job.
            log.info("function call %s has ended with an error", dispatch_id, exc_info=True)
            return Liveness.DEAD
        return Liveness.DEAD  # it returned

    async def cancel(self, dispatch_id: str, *, terminate: bool = False) -> None:
        # `FunctionCall.cancel()` on a call whose sync method is running makes modal's container raise
        # InputCancellation (a BaseException) in the worker's main thread (modal/_container_entrypoint.py,
        # `_cancel_input_signal_handler`), wherever the job happens to be: so callers ask this only for calls
        # that have not claimed their job, or with terminate=True, which ends the container as well
        # (modal/_functions.py `_FunctionCall.cancel(terminate_containers=...)`).
        await self._from_id(dispatch_id).cancel.aio(terminate_containers=terminate)

    async def close(self) -> None:
        """Nothing to release: FunctionCalls live on Modal's side."""
