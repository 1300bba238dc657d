"""Task registry: what each task takes, which engine runs it, what it is priced on and what hardware it wants.

Engine modules are imported lazily by dotted path so that the API (which has no torch) can read this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from inference.base import Engine
from inference.params import TASK_PARAMS, GenerateParams, SeparateParams, TranscribeParams

PriceUnit = Literal["audio_minute", "variant_second"]


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

    @property
    def params_model(self) -> type[BaseModel]:
        return TASK_PARAMS[self.task]

    def price_units(self, params: BaseModel, audio_seconds: float | None) -> float:
        """Units the rate applies to: audio minutes, or variants x output seconds for generation."""
        if self.price_unit == "variant_second":
            assert isinstance(params, GenerateParams)
            return params.variants * params.duration_s
        assert audio_seconds is not None
        return audio_seconds / 60.0


def _separate_key(params: SeparateParams) -> str:
    return f"demucs/{params.model}"


def _transcribe_key(params: TranscribeParams) -> str:
    return f"whisper/{params.model}"


def _generate_key(params: GenerateParams) -> str:
    return params.model


TASKS: dict[str, TaskSpec] = {
    spec.task: spec
    for spec in (
        TaskSpec("separate", "Split music into stems (demucs).", "audio", "separation", True, "audio_minute",
                 "inference.separate:build_engine", _separate_key),
        TaskSpec("enhance", "Remove noise from speech (DeepFilterNet3).", "audio", "enhancement", False,
                 "audio_minute", "inference.enhance:build_engine", lambda params: "deepfilternet3"),
        TaskSpec("transcribe", "Speech to text with timestamps (whisper).", "audio", "transcription", True,
                 "audio_minute", "inference.transcribe:build_engine", _transcribe_key),
        TaskSpec("midi", "Audio to MIDI notes (basic-pitch).", "audio", "transcription", False, "audio_minute",
                 "inference.midi:build_engine", lambda params: "basic-pitch"),
        TaskSpec("generate", "Text to audio (diffusers).", "text", "generation", True, "variant_second",
                 "inference.generate:build_engine", _generate_key),
    )
}


def load_engine(task: str, model_key: str, weights_dir: Path, **options: Any) -> Engine:
    """Build the engine for a task's model from the weights folder (the slow part; do it once per worker).

    The engine reads its files from `weights_dir / model_key`, laid out as `studio models pull` writes them.
    """
    module_name, function_name = TASKS[task].engine_factory.split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    return factory(model_key, weights_dir, **options)
