"""ModalDispatcher against a fake at the SDK boundary (`modal.FunctionCall.from_id`) raising the real modal
exception classes, and the reaper and the cancel path on real Postgres through it (issue 10, items 13 and 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
import modal
import modal.exception
import psycopg
import pytest
from modal._functions import _Invocation
from modal._serialization import serialize
from modal_proto import api_pb2

from api.background.reaper import reap
from api.dispatchers.modal import ModalDispatcher
from api.jobs.cancel import Canceled, CancelRequested, cancel_job
from api.protocols import Liveness
from api.settings import Settings
from api.state import AppState
from api.storage import LocalStorage
from tests.jobs_support import job_row, ledger_kinds, make_job, make_user, write_tone

# FunctionGetOutputs' answer for a call with an unfinished input and no output yet (modal/_functions.py:355-358).
UNFINISHED = api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=1)


class _UnfinishedStub:
    async def FunctionGetOutputs(self, request: api_pb2.FunctionGetOutputsRequest, **_: Any) -> Any:
        return UNFINISHED


async def poll_unfinished_call() -> Any:
    """Raises what modal's real `_Invocation.poll_function` raises for a call with no output yet."""
    return await _Invocation(_UnfinishedStub(), "fc-fake", client=None).poll_function(timeout=0)  # type: ignore[arg-type]


class NoOutputYet:
    """The outcome "queued or running": the fake raises the TimeoutError that modal's own `poll_function` raises."""


NO_OUTPUT_YET = NoOutputYet()


class FakeFunctionCall:
    """Stands where `modal.FunctionCall` does: `.get.aio(timeout=0)` answers as modal 1.6.4's
    `_Invocation.poll_function` would (for NO_OUTPUT_YET, the real `poll_function` on an unfinished call),
    `.cancel.aio(terminate_containers=...)` records the request."""

    def __init__(self, outcome: BaseException | str | NoOutputYet) -> None:
        self.outcome = outcome
        self.cancels: list[bool] = []
        self.get = type("get", (), {"aio": self._get})()
        self.cancel = type("cancel", (), {"aio": self._cancel})()

    async def _get(self, timeout: float | None = None) -> str:
        assert timeout == 0
        if isinstance(self.outcome, NoOutputYet):
            return await poll_unfinished_call()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def _cancel(self, terminate_containers: bool = False) -> None:
        self.cancels.append(terminate_containers)


class FunctionCalls(dict[str, FakeFunctionCall]):
    def from_id(self, object_id: str) -> FakeFunctionCall:
        return self[object_id]


# Each outcome of `FunctionCall.get(timeout=0)` in modal 1.6.4 and what it means for the job's execution.
OUTCOMES: list[tuple[str, BaseException | str | NoOutputYet, Liveness]] = [
    ("queued or running: no output yet", NO_OUTPUT_YET, Liveness.ALIVE),
    ("the worker raised TimeoutError", TimeoutError("the worker's own"), Liveness.DEAD),
    ("returned", "succeeded", Liveness.DEAD),
    ("output expired", modal.exception.OutputExpiredError(), Liveness.DEAD),
    ("timed out", modal.exception.FunctionTimeoutError("timeout"), Liveness.DEAD),
    ("container crashed", modal.exception.InternalFailure("crash"), Liveness.DEAD),
    ("cancelled", modal.exception.RemoteError("cancelled"), Liveness.DEAD),
    ("remote exception", ValueError("boom in the worker"), Liveness.DEAD),
    ("remote exception not rebuildable", modal.exception.ExecutionError("cannot deserialize"), Liveness.DEAD),
    ("no such call", modal.exception.NotFoundError("unknown function call"), Liveness.DEAD),
    ("could not connect", modal.exception.ConnectionError("Could not connect"), Liveness.UNKNOWN),
    ("control plane unavailable", modal.exception.ServiceError("UNAVAILABLE"), Liveness.UNKNOWN),
    ("rate limited", modal.exception.ResourceExhaustedError("slow down"), Liveness.UNKNOWN),
    ("server internal error", modal.exception.InternalError("INTERNAL"), Liveness.UNKNOWN),
    ("auth hiccup", modal.exception.AuthError("token"), Liveness.UNKNOWN),
    ("client closed", modal.exception.ClientClosed(), Liveness.UNKNOWN),
    ("retries exhausted", modal.exception.TimeoutError("deadline consumed"), Liveness.UNKNOWN),
    ("socket error", OSError("network unreachable"), Liveness.UNKNOWN),
]


@pytest.mark.parametrize(("what", "outcome", "expected"), OUTCOMES, ids=[o[0] for o in OUTCOMES])
async def test_is_alive_tells_alive_dead_and_unknown_apart(
    what: str, outcome: BaseException | str | NoOutputYet, expected: Liveness
) -> None:
    calls = FunctionCalls({"fc-1": FakeFunctionCall(outcome)})
    dispatcher = ModalDispatcher({}, calls.from_id)
    assert await dispatcher.is_alive("fc-1") is expected


class FakeModalControlPlane:
    """A gRPC server answering modal's `FunctionGetOutputs` with a set response, for the real modal client."""

    def __init__(self) -> None:
        self.response = UNFINISHED
        self.requests: list[api_pb2.FunctionGetOutputsRequest] = []

    async def function_get_outputs(self, stream: Any) -> None:
        self.requests.append(await stream.recv_message())
        await stream.send_message(self.response)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/modal.client.ModalClient/FunctionGetOutputs": grpclib.const.Handler(
                self.function_get_outputs,
                grpclib.const.Cardinality.UNARY_UNARY,
                api_pb2.FunctionGetOutputsRequest,
                api_pb2.FunctionGetOutputsResponse,
            )
        }


@pytest.fixture
async def control_plane() -> AsyncIterator[tuple[FakeModalControlPlane, modal.Client]]:
    plane = FakeModalControlPlane()
    server = grpclib.server.Server([plane])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with modal.Client(f"http://127.0.0.1:{port}", api_pb2.CLIENT_TYPE_CLIENT, ("ak-test", "as-test")) as client:
        yield plane, client
    server.close()
    await server.wait_closed()


def _failed_with(exc: BaseException) -> api_pb2.FunctionGetOutputsResponse:
    """The output of a call whose worker raised `exc`: status FAILURE and the pickled exception, as modal's
    container sends it (modal/_utils/function_utils.py `_process_result` reads it back)."""
    result = api_pb2.GenericResult(
        status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception=repr(exc), data=serialize(exc)
    )
    return api_pb2.FunctionGetOutputsResponse(
        outputs=[api_pb2.FunctionGetOutputsItem(result=result, data_format=api_pb2.DATA_FORMAT_PICKLE)]
    )


async def test_the_workers_own_timeout_error_is_an_ending_not_no_output_yet(
    control_plane: tuple[FakeModalControlPlane, modal.Client],
) -> None:
    """Both answers reach the dispatcher as a builtin TimeoutError through the real modal client over gRPC; only the
    unfinished call is alive (issue 19 item 5)."""
    plane, client = control_plane
    dispatcher = ModalDispatcher({}, lambda call_id: modal.FunctionCall.from_id(call_id, client=client))

    assert await dispatcher.is_alive("fc-1") is Liveness.ALIVE
    assert plane.requests[-1].function_call_id == "fc-1" and plane.requests[-1].timeout == 0

    plane.response = _failed_with(TimeoutError("the worker's upstream call timed out"))
    assert await dispatcher.is_alive("fc-1") is Liveness.DEAD

    plane.response = api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0)
    assert await dispatcher.is_alive("fc-1") is Liveness.DEAD  # OutputExpiredError
    assert len(plane.requests) == 3


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.state_dir / "files", "test-signing-key", "http://testserver")


async def _running(conn: psycopg.AsyncConnection, job_id: Any, dispatch_id: str) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = now(), heartbeat_at = now(),"
        " dispatch_id = %s WHERE id = %s",
        (dispatch_id, job_id),
    )


async def test_a_control_plane_hiccup_reaps_nothing(
    conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tmp_path: Path
) -> None:
    """One ServiceError pass must not fail running jobs as worker_lost nor respawn queued ones."""
    tone = write_tone(tmp_path / "tone.wav", seconds=0.5)
    user = await make_user(conn)
    running = await make_job(conn, storage, settings, user, tone)
    await _running(conn, running, "fc-running")
    queued = await make_job(conn, storage, settings, user, tone)
    await conn.execute("UPDATE jobs SET dispatch_id = 'fc-queued' WHERE id = %s", (queued,))
    hiccup = modal.exception.ServiceError("UNAVAILABLE")
    calls = FunctionCalls({"fc-running": FakeFunctionCall(hiccup), "fc-queued": FakeFunctionCall(hiccup)})

    report = await reap(conn, ModalDispatcher({}, calls.from_id), settings, datetime.now(UTC))

    assert (report.failed, report.canceled, report.requeued) == ([], [], [])
    assert (await job_row(conn, running))["status"] == "running"
    assert (await job_row(conn, queued))["dispatch_id"] == "fc-queued"

    # The next pass gets an answer: the running call ended, the queued one vanished.
    calls["fc-running"].outcome = modal.exception.InternalFailure("crash")
    calls["fc-queued"].outcome = modal.exception.OutputExpiredError()
    report = await reap(conn, ModalDispatcher({}, calls.from_id), settings, datetime.now(UTC))
    assert report.failed == [running] and report.requeued == [queued]
    assert await ledger_kinds(conn, running) == ["hold", "release"]


async def test_cancel_never_interrupts_a_claimed_call_and_terminates_past_deadline(
    app_state: AppState, conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tmp_path: Path
) -> None:
    """Running jobs stop through cancel_requested only: FunctionCall.cancel() would raise InputCancellation in the
    worker's main thread. A call not yet claimed may be cancelled; a job past its deadline has its containers
    terminated (a hung engine reports no progress, so it would never see the flag)."""
    tone = write_tone(tmp_path / "tone.wav", seconds=0.5)
    user = await make_user(conn)
    calls = FunctionCalls({name: FakeFunctionCall(NO_OUTPUT_YET) for name in ("fc-q", "fc-r", "fc-late")})
    app_state.dispatcher = ModalDispatcher({}, calls.from_id)
    app_state.storage = storage

    queued = await make_job(conn, storage, settings, user, tone)
    await conn.execute("UPDATE jobs SET dispatch_id = 'fc-q' WHERE id = %s", (queued,))
    assert isinstance(await cancel_job(app_state, queued, user), Canceled)
    assert calls["fc-q"].cancels == [False]

    running = await make_job(conn, storage, settings, user, tone)
    await _running(conn, running, "fc-r")
    assert isinstance(await cancel_job(app_state, running, user), CancelRequested)
    assert calls["fc-r"].cancels == []
    assert (await job_row(conn, running))["cancel_requested"] is True

    late = await make_job(conn, storage, settings, user, tone)
    await _running(conn, late, "fc-late")
    report = await reap(conn, app_state.dispatcher, settings, datetime.now(UTC) + timedelta(days=1))
    assert late in report.failed
    assert calls["fc-late"].cancels == [True]
