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
from inference.params import (
    SONG_DEFAULT_STEPS,
    SONG_MAX_SECONDS,
    TASK_PARAMS,
    CoverParams,
    GenerateParams,
    MixdownParams,
    RepaintParams,
    SeparateParams,
    SongParams,
    TranscribeParams,
    separate_model_key,
)

PriceUnit = Literal["audio_minute", "variant_second", "output_minute", "song_minute"]
# audio: one uploaded (or fetched) input; text: none; tracks: none uploaded, the params name outputs of the user's
# own earlier jobs, which the worker reads from the outputs bucket (mixdown).
InputKind = Literal["audio", "text", "tracks"]
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
# The core install's decoder and resampler (pyproject dependencies; licences from each wheel's METADATA).
_PYAV = Library("av", "18.1.0", "BSD-3-Clause", "decoding the tracks (FFmpeg)")
_SOXR = Library("soxr", "1.1.0", "LGPL-2.1-or-later", "resampling the tracks to the mix's rate")
_SCIPY = Library("scipy", "1.17.1", "BSD-3-Clause", "filters, FIR design")


@dataclass(frozen=True)
class TaskSpec:
    task: str
    description: str
    input_kind: InputKind
    family: str  # the pyproject optional group (and Modal image) the engine needs
    gpu: bool
    price_unit: PriceUnit
    engine_factory: str  # "module:function", called as factory(model_key, weights_dir) -> Engine
    model_key: Callable[[Any], str]  # params -> models.lock key of the weights the job needs
    # Seconds a run may take per priced second (audio seconds x passes, or generated variant-seconds) on the slowest
    # machine we support (local CPU), model load included: a bound for the local watchdog, not a speed figure. CPU
    # tasks: 20x or more the CPU seconds measured in docs/COSTS.md (enhance 0.22, midi 0.05, master 0.05, tune 0.75,
    # fx 0.01 s per second); GPU models on a CPU are unmeasured here, so their bounds are wide.
    worst_realtime_factor: float
    # Tasks without weights (DSP) have no models.lock rows: `needs_weights` is False, and `libraries` names what
    # they run on, with licences, for GET /v1/tasks. Their model_key is a plain engine name ("dsp/master").
    needs_weights: bool = True
    libraries: tuple[Library, ...] = ()
    # Named inputs besides the main one, all optional (the engine is a `MultiInputEngine`); other tasks refuse them.
    extra_inputs: tuple[str, ...] = ()
    # The task whose models.lock rows this one runs on, when it shares another task's weights (cover, repaint: song's).
    models_from: str | None = None
    # params, input seconds -> (code, detail) when the params cannot run on an input that long (checked at submit and
    # quote, before any hold; the engine checks again on what it decodes).
    input_problem: Callable[[Any, float], tuple[str, str] | None] | None = None

    @property
    def lock_task(self) -> str:
        """The `task` of this task's rows in models.lock."""
        return self.models_from or self.task

    def priced_seconds(self, params: BaseModel, audio_seconds: float | None) -> float:
        """The seconds the price counts: audio, mix or song seconds (x passes, variants, steps) or generated
        variant-seconds (x steps)."""
        units = self.price_units(params, audio_seconds)
        return units * 60.0 if self.price_unit in ("audio_minute", "output_minute", "song_minute") else units

    @property
    def params_model(self) -> type[BaseModel]:
        return TASK_PARAMS[self.task]

    def price_units(self, params: BaseModel, audio_seconds: float | None) -> float:
        """Units the rate applies to: audio minutes (times the passes, for separation), variants x output
        seconds x steps / default steps for generation (SPEC section 2), the mix's minutes for a mixdown; for songs,
        generated minutes x variants x steps / default steps (a cover or repaint generates as long as its input: the
        pipeline denoises all of it)."""
        if self.price_unit == "output_minute":
            assert isinstance(params, MixdownParams)
            return params.output_seconds() / 60.0
        if self.price_unit == "song_minute":
            return _song_minutes(params, audio_seconds)
        if self.price_unit == "variant_second":
            assert isinstance(params, GenerateParams)
            # Diffusion cost grows linearly with steps: unpriced, steps=250 would cost 2.5x the compute at one price.
            return params.variants * params.duration_s * params.steps / DEFAULT_GENERATE_STEPS
        assert audio_seconds is not None
        minutes = audio_seconds / 60.0
        # Separation's cost scales with its passes (shifts, bag size): price them, or shifts=10 runs at a loss.
        return minutes * params.compute_factor() if isinstance(params, SeparateParams) else minutes


def _song_minutes(params: BaseModel, audio_seconds: float | None) -> float:
    if isinstance(params, SongParams):
        seconds, variants = params.duration_s, params.variants
    else:
        assert isinstance(params, CoverParams | RepaintParams) and audio_seconds is not None
        seconds, variants = audio_seconds, params.variants if isinstance(params, CoverParams) else 1
    return variants * seconds / 60.0 * params.steps / SONG_DEFAULT_STEPS


def _song_input_problem(params: CoverParams | RepaintParams, audio_seconds: float) -> tuple[str, str] | None:
    if audio_seconds > SONG_MAX_SECONDS:
        return (
            "input_too_long",
            f"{params.model} takes songs up to {SONG_MAX_SECONDS:g} s; this one is {audio_seconds:.1f} s.",
        )
    if isinstance(params, RepaintParams) and params.end_s > audio_seconds:
        return "span_outside_input", f"end_s ({params.end_s:g}) is past the end of the input ({audio_seconds:.3f} s)."
    return None


def _separate_key(params: SeparateParams) -> str:
    return separate_model_key(params.model)


def _transcribe_key(params: TranscribeParams) -> str:
    return params.model_key


def _generate_key(params: GenerateParams) -> str:
    return params.model


_SPECS = (
    TaskSpec(task="separate", description="Split music into stems (RoFormer; demucs).", input_kind="audio",
             family="separation", gpu=True, price_unit="audio_minute",
             engine_factory="inference.separate:build_engine", model_key=_separate_key,
             worst_realtime_factor=30.0),
    TaskSpec(task="enhance", description="Remove noise from speech (DeepFilterNet3).", input_kind="audio",
             family="enhancement", gpu=False, price_unit="audio_minute",
             engine_factory="inference.enhance:build_engine", model_key=lambda params: "deepfilternet3",
             worst_realtime_factor=5.0),
    TaskSpec(task="transcribe", description="Speech to text with timestamps (faster-whisper or whisper).",
             input_kind="audio",
             family="transcription", gpu=True, price_unit="audio_minute",
             engine_factory="inference.transcribe:build_engine", model_key=_transcribe_key,
             worst_realtime_factor=30.0),
    TaskSpec(task="midi", description="Audio to MIDI notes (basic-pitch).", input_kind="audio",
             family="transcription", gpu=False, price_unit="audio_minute",
             engine_factory="inference.midi:build_engine", model_key=lambda params: "basic-pitch",
             worst_realtime_factor=5.0),
    TaskSpec(task="generate", description="Text to audio (diffusers).", input_kind="text",
             family="generation", gpu=True, price_unit="variant_second",
             engine_factory="inference.generate:build_engine", model_key=_generate_key,
             worst_realtime_factor=120.0),
    TaskSpec(task="song", description="Text and lyrics to a song with vocals (ACE-Step 1.5).", input_kind="text",
             family="generation", gpu=True, price_unit="song_minute",
             engine_factory="inference.song:build_engine", model_key=lambda params: params.model,
             worst_realtime_factor=120.0),
    TaskSpec(task="cover", description="The same song in another style (ACE-Step 1.5 cover).", input_kind="audio",
             family="generation", gpu=True, price_unit="song_minute",
             engine_factory="inference.song:build_engine", model_key=lambda params: params.model,
             models_from="song", input_problem=_song_input_problem, worst_realtime_factor=120.0),
    TaskSpec(task="repaint", description="Regenerate one span of a song; the rest is kept (ACE-Step 1.5 repaint).",
             input_kind="audio", family="generation", gpu=True, price_unit="song_minute",
             engine_factory="inference.song:build_engine", model_key=lambda params: params.model,
             models_from="song", input_problem=_song_input_problem, worst_realtime_factor=120.0),
    TaskSpec(task="master", description="Master to a loudness target (LUFS, true-peak ceiling), optionally matched "
             "to a reference track.", input_kind="audio", family="dsp", gpu=False, price_unit="audio_minute",
             engine_factory="inference.master:build_engine", model_key=lambda params: "dsp/master",
             needs_weights=False, libraries=(_PEDALBOARD, _PYLOUDNORM, _SCIPY), extra_inputs=("reference",),
             worst_realtime_factor=5.0),
    TaskSpec(task="tune", description="Pitch-correct a monophonic voice or instrument to a key and scale.",
             input_kind="audio", family="dsp", gpu=False, price_unit="audio_minute",
             engine_factory="inference.tune:build_engine", model_key=lambda params: "dsp/tune",
             needs_weights=False, libraries=(_PYWORLD,), worst_realtime_factor=15.0),
    TaskSpec(task="fx", description="Run an effects chain (reverb, delay, EQ, dynamics, ...).", input_kind="audio",
             family="dsp", gpu=False, price_unit="audio_minute",
             engine_factory="inference.fx:build_engine", model_key=lambda params: "dsp/fx",
             needs_weights=False, libraries=(_PEDALBOARD,), worst_realtime_factor=5.0),
    TaskSpec(task="mixdown", description="Render a session's tracks (offsets, gains, pans, trims) to one stereo "
             "file.", input_kind="tracks", family="dsp", gpu=False, price_unit="output_minute",
             engine_factory="inference.mixdown:build_engine", model_key=lambda params: "dsp/mixdown",
             needs_weights=False, libraries=(_PYAV, _SOXR), worst_realtime_factor=5.0),
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
