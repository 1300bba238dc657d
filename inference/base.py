"""The one shape every engine has.

An engine is built once from a weights folder (all loading happens in its constructor) and then runs many
jobs. `run` takes the input file (None for text-to-audio), validated params, an output folder and a progress
callback, and returns the files it wrote. Engines never touch the database, storage or HTTP.

Second inputs: a task whose registry entry lists `extra_inputs` (e.g. `master` takes an optional `reference`) has a
`MultiInputEngine`: the caller passes `extra_inputs={name: path}` as a keyword, holding only the inputs the user
gave (each probed, limited and stored like the main input); an absent optional input is simply not in the mapping.
Engines of other tasks are called exactly as before, without the keyword.

Devices (`DeviceEngine`): an engine of a GPU task (registry `TaskSpec.gpu`) takes `device=` in its factory, reports
where its weights are as `device` ("cpu", "cuda", "cuda:0"; a `torch.device` reads the same through `engine_device`)
and moves with `to(device)`, returning itself. A Modal GPU worker builds it with `device="cpu"` before its memory
snapshot (no GPU is attached then, and nothing may ask for CUDA: modal_app.py `_JobWorker`), calls `to("cuda")` after
the restore, and refuses to start unless every preloaded engine then reports the GPU. `to` does whatever that
library needs: a torch module moves its tensors; a CTranslate2 model, whose device is fixed when it is built, is
rebuilt on the new device. `device` is where the last build or move that succeeded put the weights (the libraries
raise rather than put them elsewhere), never a request that failed. CPU-only engines (DSP, ONNX, the Rust runtime)
have neither and read as "cpu". tests/test_modal_lifecycle.py drives every worker class through this protocol.

Partial outputs: an engine hands over what it has finished before the whole run ends with `emit_partial` (a
transcript segment as transcript.json writes it, or an `OutputFile` it has written and closed and will return). The
worker collects them with `partial_outputs` around the run (asyncio.to_thread copies the context into the engine's
thread); with no collector they are dropped, so engines call it unconditionally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

# progress(fraction in [0, 1], optional short stage label). Cheap to call; the runner throttles what it forwards.
ProgressFn = Callable[[float, str | None], None]


class EngineError(Exception):
    """A failure caused by the input or params, safe to show to the user (e.g. undecodable audio)."""

    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


@dataclass(frozen=True)
class OutputFile:
    name: str  # file name the user sees, e.g. "vocals.wav"; unique within a job
    path: Path  # where the engine wrote it (inside the out_dir it was given)
    content_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineResult:
    outputs: list[OutputFile]
    # audio_seconds: input duration; output_seconds: audio produced (generation). Extra keys are kept as metrics.
    metrics: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult: ...


class MultiInputEngine(Protocol):
    """An engine that takes named inputs besides the main one (the registry's `TaskSpec.extra_inputs`)."""

    def run(
        self,
        input_path: Path | None,
        params: BaseModel,
        out_dir: Path,
        progress: ProgressFn,
        extra_inputs: Mapping[str, Path] | None = None,
    ) -> EngineResult: ...


@runtime_checkable
class DeviceEngine(Protocol):
    """An engine whose weights live on a device it reports and can move (see the module docstring)."""

    @property
    def device(self) -> Any: ...

    def to(self, device: str) -> DeviceEngine: ...


def engine_device(engine: object) -> str:
    """Where an engine's weights are: its `device` as text ("cpu" for engines without one)."""
    return str(engine.device) if isinstance(engine, DeviceEngine) else "cpu"


def no_progress(fraction: float, stage: str | None = None) -> None:
    """A ProgressFn that drops updates."""


# A transcript segment (a dict, as in transcript.json's `segments`) or a finished output file.
Partial = dict[str, Any] | OutputFile
PartialSink = Callable[[Partial], None]
_PARTIAL_SINK: ContextVar[PartialSink | None] = ContextVar("partial_sink", default=None)


@contextmanager
def partial_outputs(sink: PartialSink) -> Iterator[None]:
    """Send every `emit_partial` in this context (and threads started from it with to_thread) to `sink`."""
    token = _PARTIAL_SINK.set(sink)
    try:
        yield
    finally:
        _PARTIAL_SINK.reset(token)


def emit_partial(partial: Partial) -> None:
    """Hand a finished part of the result to whoever runs the engine (dropped when nobody collects). Cheap: the
    collector only queues it."""
    sink = _PARTIAL_SINK.get()
    if sink is not None:
        sink(partial)
