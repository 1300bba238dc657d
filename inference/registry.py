"""Task registry: what each task takes, which engine runs it, what it is priced on and what hardware it wants.

Engine modules are imported lazily by dotted path so that the API (which has no torch) can read this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from inference.base import Engine
from inference.params import TASK_PARAMS, GenerateParams, SeparateParams, TranscribeParams, separate_model_key

PriceUnit = Literal["audio_minute", "variant_second"]
DEFAULT_GENERATE_STEPS: int = GenerateParams.model_fields["steps"].default


@dataclass(frozen=True)
class Library:
    name: str  # the PyPI package, pinned in pyproject's optional group for the task's family
    version: str
    licence: str  # SPDX
    role: str


# The `dsp` family (pyproject group `dsp`): pinned there; pedalboard is GPL-3.0-only, so a deployment that ships it
# distributes GPL code (its source must be offered on request); the others are MIT.
_PEDALBOARD = Library("pedalboard", "0.9.26", "GPL-3.0-only", "effects and mastering chain (JUCE DSP)")
_PYLOUDNORM = Library("pyloudnorm", "0.2.0", "MIT", "ITU-R BS.1770-4 K-weighting and gating")
_PYWORLD = Library("pyworld", "0.3.5", "MIT", "WORLD vocoder: Harvest f0, CheapTrick, D4C, synthesis")
_SCIPY = Library("scipy", "1.17.1", "BSD-3-Clause", "filters, FIR design")


@dataclass(frozen=True)
class TaskSpec:
    task: str
    description: str
    input_kind: Literal["audio", "text"]
    family: str  # the pyproject optional group (and Modal image) the engine needs
    gpu: bool
    price_unit: PriceUnit
    engine_factory: str  # "module:function", called as factory(model_key, weights_dir) -> Engine
    model_key: Callable[[Any], str]  # params -> models.lock key of the weights the job needs
    # Tasks without weights (DSP) have no models.lock rows: `needs_weights` is False, and `libraries` names what
    # they run on, with licences, for GET /v1/tasks. Their model_key is a plain engine name ("dsp/master").
    needs_weights: bool = True
    libraries: tuple[Library, ...] = ()
    # Named inputs besides the main one, all optional (the engine is a `MultiInputEngine`); other tasks refuse them.
    extra_inputs: tuple[str, ...] = ()

    @property
    def params_model(self) -> type[BaseModel]:
        return TASK_PARAMS[self.task]

    def price_units(self, params: BaseModel, audio_seconds: float | None) -> float:
        """Units the rate applies to: audio minutes (times the passes, for separation), or variants x output
        seconds x steps / default steps for generation (SPEC section 2)."""
        if self.price_unit == "variant_second":
            assert isinstance(params, GenerateParams)
            # Diffusion cost grows linearly with steps: unpriced, steps=250 would cost 2.5x the compute at one price.
            return params.variants * params.duration_s * params.steps / DEFAULT_GENERATE_STEPS
        assert audio_seconds is not None
        minutes = audio_seconds / 60.0
        # Separation's cost scales with its passes (shifts, bag size): price them, or shifts=10 runs at a loss.
        return minutes * params.compute_factor() if isinstance(params, SeparateParams) else minutes


def _separate_key(params: SeparateParams) -> str:
    return separate_model_key(params.model)


def _transcribe_key(params: TranscribeParams) -> str:
    return params.model_key


def _generate_key(params: GenerateParams) -> str:
    return params.model


_SPECS = (
    TaskSpec(task="separate", description="Split music into stems (RoFormer; demucs).", input_kind="audio",
             family="separation", gpu=True, price_unit="audio_minute",
             engine_factory="inference.separate:build_engine", model_key=_separate_key),
    TaskSpec(task="enhance", description="Remove noise from speech (DeepFilterNet3).", input_kind="audio",
             family="enhancement", gpu=False, price_unit="audio_minute",
             engine_factory="inference.enhance:build_engine", model_key=lambda params: "deepfilternet3"),
    TaskSpec(task="transcribe", description="Speech to text with timestamps (faster-whisper or whisper).",
             input_kind="audio",
             family="transcription", gpu=True, price_unit="audio_minute",
             engine_factory="inference.transcribe:build_engine", model_key=_transcribe_key),
    TaskSpec(task="midi", description="Audio to MIDI notes (basic-pitch).", input_kind="audio",
             family="transcription", gpu=False, price_unit="audio_minute",
             engine_factory="inference.midi:build_engine", model_key=lambda params: "basic-pitch"),
    TaskSpec(task="generate", description="Text to audio (diffusers).", input_kind="text",
             family="generation", gpu=True, price_unit="variant_second",
             engine_factory="inference.generate:build_engine", model_key=_generate_key),
    TaskSpec(task="master", description="Master to a loudness target (LUFS, true-peak ceiling), optionally matched "
             "to a reference track.", input_kind="audio", family="dsp", gpu=False, price_unit="audio_minute",
             engine_factory="inference.master:build_engine", model_key=lambda params: "dsp/master",
             needs_weights=False, libraries=(_PEDALBOARD, _PYLOUDNORM, _SCIPY), extra_inputs=("reference",)),
    TaskSpec(task="tune", description="Pitch-correct a monophonic voice or instrument to a key and scale.",
             input_kind="audio", family="dsp", gpu=False, price_unit="audio_minute",
             engine_factory="inference.tune:build_engine", model_key=lambda params: "dsp/tune",
             needs_weights=False, libraries=(_PYWORLD,)),
    TaskSpec(task="fx", description="Run an effects chain (reverb, delay, EQ, dynamics, ...).", input_kind="audio",
             family="dsp", gpu=False, price_unit="audio_minute",
             engine_factory="inference.fx:build_engine", model_key=lambda params: "dsp/fx",
             needs_weights=False, libraries=(_PEDALBOARD,)),
)  # fmt: skip
TASKS: dict[str, TaskSpec] = {spec.task: spec for spec in _SPECS}
# The task names as a type (e.g. the jobs listing's `task` filter), derived from TASKS so no second list is kept.
TaskName = StrEnum("TaskName", {task: task for task in TASKS})


def load_engine(task: str, model_key: str, weights_dir: Path, **options: Any) -> Engine:
    """Build the engine for a task's model from the weights folder (the slow part; do it once per worker).

    The engine reads its files from `weights_dir / model_key`, laid out as `studio models pull` writes them.
    """
    module_name, function_name = TASKS[task].engine_factory.split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    return factory(model_key, weights_dir, **options)
