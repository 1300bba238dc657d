"""One worker class of modal_app taken through a Modal container's life in this fresh process: the child that
tests/test_modal_lifecycle.py runs (after its network guard) and whose JSON report it checks.

Modal's order (modal 1.6.4): import the app; run the snap=True enter hooks with no GPU attached
(modal/_runtime/user_code_imports.py line 358, `lifecycle_presnapshot`); take the memory snapshot; after the restore,
with the GPU attached, run the snap=False hooks (line 373, `lifecycle_postsnapshot`); then take inputs, each a sync
call on the main thread with modal's SIGUSR1 handler raising InputCancellation for a cancelled input
(modal/_container_entrypoint.py lines 255-266). Preemption is a SIGINT (then SIGKILL 30 s later). `.local()` would
run both hook phases back to back (modal/_functions.py line 2212 -> modal/cls.py `_Obj._enter`, lines 359-373), so
the harness runs them itself, by the same flags modal's container uses, and marks the object entered.

CUDA is instrumented at the libraries' API boundary:
- before the snapshot, every CUDA query of torch (`torch.cuda.*`) and CTranslate2 (`get_cuda_device_count`,
  `get_supported_compute_types`, a model built for a GPU) and every move of a torch module to a GPU is a violation:
  recorded, and raised so the hook fails. A CPU worker keeps the tripwire for its whole life.
- after the restore, torch reports one CUDA device; a torch module moved to a GPU and a CTranslate2 model built for
  one record the device (and precision) asked for and stay on the CPU, which is all this machine has.
The inputs then run on the CPU: the harness moves the engines back with the protocol's own `to("cpu")`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CUDA_QUERIES = (
    "is_available",
    "device_count",
    "current_device",
    "get_device_name",
    "get_device_capability",
    "get_device_properties",
    "init",
    "_lazy_init",
    "mem_get_info",
    "set_device",
    "synchronize",
    "is_bf16_supported",
)
CTRANSLATE2_QUERIES = ("get_cuda_device_count", "get_supported_compute_types")


class Instruments:
    """The CUDA boundary of torch and CTranslate2, in one of two states: "snapshot" (no GPU: any query is a violation)
    or "gpu" (one CUDA device reported; moves and builds recorded, done on the CPU)."""

    def __init__(self) -> None:
        import ctranslate2
        import torch

        self.state = "snapshot"
        self.violations: list[str] = []
        self.moves: list[str] = []  # devices torch modules were moved to
        self.ct2_builds: list[dict[str, str]] = []  # {device, compute_type} CTranslate2 models were built for
        self._torch, self._ct2 = torch, ctranslate2
        for name in CUDA_QUERIES:
            if hasattr(torch.cuda, name):
                setattr(torch.cuda, name, self._query(f"torch.cuda.{name}", getattr(torch.cuda, name)))
        for name in CTRANSLATE2_QUERIES:
            setattr(ctranslate2, name, self._query(f"ctranslate2.{name}", getattr(ctranslate2, name)))
        module_to = torch.nn.Module.to

        def to(module: Any, *args: Any, **kwargs: Any) -> Any:
            device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
            if device is None or device.type == "cpu":
                return module_to(module, *args, **kwargs)
            self._gpu_use(f"torch.nn.Module.to({device})")
            self.moves.append(str(device))
            return module_to(module, torch.device("cpu"), dtype) if dtype is not None else module_to(module, "cpu")

        torch.nn.Module.to = to  # type: ignore[method-assign]
        whisper = ctranslate2.models.Whisper

        def build_whisper(model_path: str, device: str = "cpu", *args: Any, **kwargs: Any) -> Any:
            if device == "cpu":
                return whisper(model_path, device, *args, **kwargs)
            self._gpu_use(f"ctranslate2.models.Whisper(device={device!r})")
            self.ct2_builds.append({"device": device, "compute_type": str(kwargs.get("compute_type"))})
            return whisper(model_path, "cpu", *args, **{**kwargs, "compute_type": "int8"})

        ctranslate2.models.Whisper = build_whisper

    def _gpu_use(self, what: str) -> None:
        if self.state == "snapshot":
            self.violations.append(what)
            raise AssertionError(f"{what} before the memory snapshot (no GPU is attached then)")

    def _query(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def query(*args: Any, **kwargs: Any) -> Any:
            self._gpu_use(f"{name}()")
            if name.endswith(("is_available",)):
                return True
            if name.endswith(("device_count", "get_cuda_device_count")):
                return 1
            if name.endswith("get_supported_compute_types"):
                return real("cpu") | {"float16", "int8_float16"}
            if name.endswith(("current_device",)):
                return 0
            if name.endswith(("init", "_lazy_init", "set_device", "synchronize")):
                return None
            raise AssertionError(f"{name}() has no stand-in on this machine")

        return query


def _hooks(instance: Any, flag: Any) -> list[Callable[[], None]]:
    from modal._partial_function import _find_callables_for_obj

    return list(_find_callables_for_obj(instance, flag).values())


def _signal_at_first_report(signum: int, event_name: str) -> Callable[[], None]:
    """Send `signum` to this process when the engine first reports progress (from the engine thread, so the main
    thread is inside the event loop), and let the engine go on once the worker's handler has set the runner's
    `event_name` event: the engine's next report sees it. Returns the undo."""
    from api.worker import runner

    report = runner._Progress.report
    fired = threading.Event()

    def signalling(progress: Any, fraction: float, stage: str | None = None) -> None:
        if not fired.is_set():
            fired.set()
            os.kill(os.getpid(), signum)
            if not getattr(progress, event_name).wait(30):
                raise AssertionError(f"the worker's handler never saw signal {signum}")
        report(progress, fraction, stage)

    runner._Progress.report = signalling  # type: ignore[method-assign]
    return lambda: setattr(runner._Progress, "report", report)


def _outcome(call: Callable[[], Any]) -> str:
    try:
        return f"returned {call()}"
    except BaseException as exc:  # the report names whatever the call raised, KeyboardInterrupt included
        return f"raised {type(exc).__name__}"


def _job_state(job_id: str) -> dict[str, Any]:
    """The job row and ledger as the next attempt would find them."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            "SELECT status::text, stage, attempts, heartbeat_at IS NOT NULL, input_ref IS NOT NULL FROM jobs"
            " WHERE id = %s",
            (job_id,),
        ).fetchone()
        ledger = "SELECT kind::text FROM ledger_entries WHERE job_id = %s ORDER BY id"
        kinds = conn.execute(ledger, (job_id,)).fetchall()
    assert row is not None
    keys = ("status", "stage", "attempts", "heartbeat", "input_kept")
    return dict(zip(keys, row, strict=True)) | {"ledger": [kind for (kind,) in kinds]}


def main() -> None:
    spec = json.loads(sys.argv[1])
    report: dict[str, Any] = {}
    try:
        _live(spec, report)
    finally:
        Path(spec["report"]).write_text(json.dumps(report, default=str))


def _live(spec: dict[str, Any], report: dict[str, Any]) -> None:
    instruments = Instruments()

    from modal._partial_function import _PartialFunctionFlags
    from modal._utils.async_utils import synchronizer
    from modal.exception import InputCancellation

    import modal_app
    from inference.base import engine_device
    from inference.registry import TASKS

    cls = modal_app.WORKERS[spec["task"]]
    cls._get_user_cls().preload_models = tuple(spec["preload_models"])  # tiny stand-ins, each library's format
    gpu = TASKS[spec["task"]].gpu
    worker = cls()
    obj = synchronizer._translate_in(worker)  # the modal _Obj whose instance `.local()` calls (modal/cls.py)
    instance = obj._cached_user_cls_instance()

    def enter(flag: Any) -> Callable[[], list[None]]:
        return lambda: [hook() for hook in _hooks(instance, flag)]

    report["snapshot"] = _outcome(enter(_PartialFunctionFlags.ENTER_PRE_SNAPSHOT))
    report["snapshot_violations"] = list(instruments.violations)
    preloaded = getattr(instance, "preloaded", {})
    report["snapshot_devices"] = {key: engine_device(engine) for (_, key), engine in preloaded.items()}
    if gpu:
        instruments.state = "gpu"  # restored onto a machine with a GPU attached; a CPU worker never gets one
    report["restore"] = _outcome(enter(_PartialFunctionFlags.ENTER_POST_SNAPSHOT))
    report["violations"] = list(instruments.violations)
    report["moves"] = sorted(set(instruments.moves))
    report["ct2_builds"] = list(instruments.ct2_builds)
    if not report["restore"].startswith("returned"):
        return
    obj._has_entered = True  # the container entered it: `.local()` runs the inputs on this same instance
    engines = instance.context.engines
    report["devices"] = {key: engine_device(engine) for (_, key), engine in engines.items()}

    # This machine has no GPU: the inputs run with the engines back on the CPU, moved by the protocol's own `to`.
    for engine in engines.values():
        move = getattr(engine, "to", None)
        if move is not None:
            move("cpu")
    instance.context.device = "cpu"

    def cancel_input(signum: int, frame: Any) -> None:  # modal's `_cancel_input_signal_handler`
        raise InputCancellation("Input was cancelled by user")

    signal.signal(signal.SIGUSR1, cancel_input)  # as modal's container sets it around each sync input
    jobs = spec["jobs"]
    report["input"] = _outcome(lambda: worker.run.local(jobs["input"]))
    undo = _signal_at_first_report(signal.SIGUSR1, "interrupted")
    report["cancel"] = _outcome(lambda: worker.run.local(jobs["cancel"]))
    undo()
    undo = _signal_at_first_report(signal.SIGINT, "preempted")
    report["preempt"] = _outcome(lambda: worker.run.local(jobs["preempt"]))
    undo()
    report["after_preempt"] = _job_state(jobs["preempt"])
    usr1, sigint = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGINT)
    report["handlers_restored"] = usr1 is cancel_input and sigint is signal.default_int_handler
    report["retry"] = _outcome(lambda: worker.run.local(jobs["preempt"]))  # Modal's retry of the preempted input
    report["violations_at_the_end"] = list(instruments.violations)


if __name__ == "__main__":
    main()
