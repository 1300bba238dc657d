"""The one shape every engine has.

An engine is built once from a weights folder (all loading happens in its constructor) and then runs many
jobs. `run` takes the input file (None for text-to-audio), validated params, an output folder and a progress
callback, and returns the files it wrote. Engines never touch the database, storage or HTTP.

Second inputs: a task whose registry entry lists `extra_inputs` (e.g. `master` takes an optional `reference`) has a
`MultiInputEngine`: the caller passes `extra_inputs={name: path}` as a keyword, holding only the inputs the user
gave (each probed, limited and stored like the main input); an absent optional input is simply not in the mapping.
Engines of other tasks are called exactly as before, without the keyword.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


def no_progress(fraction: float, stage: str | None = None) -> None:
    """A ProgressFn that drops updates."""
