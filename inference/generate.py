"""Text-to-audio with diffusers: Stable Audio Open (default) and AudioLDM2 (licence gate: api.jobs.request).

The weights folder `weights_dir / model_key` is a diffusers pipeline folder as a hub snapshot or `save_pretrained`
writes it. All variants of a job come from one batched pipeline call (`num_waveforms_per_prompt`).

Precision: on CUDA both pipelines run in fp16, the precision diffusers' and the model cards' own examples use
(`torch_dtype=torch.float16`) for every component, Stable Audio Open's Oobleck VAE and T5 encoder included (the
transformers T5 clamps fp16 overflow in its layers); fp16 halves memory and is about twice as fast on tensor cores.
The pipelines hand back float32 audio either way. On CPU everything runs in fp32 (fp16 is slow or unsupported
there).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AudioLDM2Pipeline, DiffusionPipeline, StableAudioPipeline
from pydantic import BaseModel
from transformers import GPT2LMHeadModel

from inference.audio import CONTENT_TYPES, encode
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn
from inference.params import GenerateParams

_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "stable-audio-open": StableAudioPipeline,
    "audioldm2": AudioLDM2Pipeline,
}
# Share of the progress bar the denoising loop covers; prompt encoding comes before, decoding and writing after.
_DENOISE_START, _DENOISE_END = 0.05, 0.9


@dataclass(frozen=True)
class _Geometry:
    sample_rate: int
    min_seconds: float  # the shortest length the pipeline accepts; shorter requests are generated at this and cut
    max_seconds: float | None  # the longest it can produce; None when only the params limit applies


def build_engine(model_key: str, weights_dir: Path, *, device: str | None = None) -> GenerateEngine:
    """Load the pipeline once (slow: seconds to a minute for the real weights) on `device`, fp16 on CUDA; None picks
    CUDA when available (a Modal worker passes "cpu" before its snapshot: inference/base.py `DeviceEngine`)."""
    if model_key not in _PIPELINES:
        raise EngineError(f"unknown generation model {model_key!r}", code="unknown_model")
    folder = Path(weights_dir) / model_key
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers pipeline for {model_key} at {folder} (pull the model weights first)")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if target.type == "cuda" else torch.float32
    extra: dict[str, Any] = {}
    if model_key == "audioldm2":
        # The cvssp/audioldm2 snapshot declares a GPT2Model, which has no generation helpers in current
        # transformers, so the pipeline's prompt generation fails on it (diffusers issue #12630). The same weights
        # load into GPT2LMHeadModel (its lm_head is tied to the embeddings), which has them.
        extra["language_model"] = GPT2LMHeadModel.from_pretrained(
            folder / "language_model", local_files_only=True, dtype=dtype
        )
    pipeline = _PIPELINES[model_key].from_pretrained(folder, local_files_only=True, torch_dtype=dtype, **extra)
    pipeline.set_progress_bar_config(disable=True)
    return GenerateEngine(model_key, pipeline.to(target), target)


class GenerateEngine:
    def __init__(self, model_key: str, pipeline: DiffusionPipeline, device: torch.device) -> None:
        self.model_key = model_key
        self.pipeline = pipeline
        self.device = device
        self.geometry = _geometry(pipeline)

    def to(self, device: str | torch.device) -> GenerateEngine:
        """Move the pipeline (a worker loads on the CPU, then moves it to the GPU after a snapshot restore), in the
        precision `build_engine` would have chosen there."""
        target = torch.device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        self.pipeline = self.pipeline.to(target, dtype)
        self.device = target  # only once the move succeeded (inference/base.py `DeviceEngine`)
        return self

    @property
    def sample_rate(self) -> int:
        return self.geometry.sample_rate

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        assert isinstance(params, GenerateParams)
        if params.model != self.model_key:
            raise ValueError(f"this engine runs {self.model_key}, the job asks for {params.model}")
        geometry = self.geometry
        if geometry.max_seconds is not None and params.duration_s > geometry.max_seconds:
            raise EngineError(
                f"duration_s must be at most {geometry.max_seconds:g} for {self.model_key}", code="duration_too_long"
            )
        # No seed: pick one and report it, so the user can reproduce the result.
        seed = params.seed if params.seed is not None else secrets.randbelow(2**32)
        steps = params.steps
        progress(0.0, "encoding prompt")

        def on_step(step: int, timestep: Any, latents: torch.Tensor) -> None:
            fraction = min(1.0, (step + 1) / steps)
            progress(_DENOISE_START + (_DENOISE_END - _DENOISE_START) * fraction, "denoising")

        with torch.inference_mode():
            audio = self._call(params, max(params.duration_s, geometry.min_seconds), seed, on_step)
        progress(_DENOISE_END, "writing")
        samples = max(1, round(params.duration_s * geometry.sample_rate))
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = []
        for index, waveform in enumerate(_fit_length(audio, samples), start=1):
            name = f"variant_{index}.wav"
            path = encode(out_dir / name, waveform, geometry.sample_rate, "wav")
            outputs.append(OutputFile(name=name, path=path, content_type=CONTENT_TYPES["wav"], metadata={
                "model": self.model_key, "variant": index, "seed": seed, "sample_rate": geometry.sample_rate,
                "duration_s": samples / geometry.sample_rate, "steps": steps,
                "guidance_scale": params.guidance_scale,
            }))  # fmt: skip
        progress(1.0, None)
        return EngineResult(outputs=outputs, metrics={"output_seconds": params.variants * params.duration_s})

    def _call(
        self, params: GenerateParams, seconds: float, seed: int, on_step: Callable[[int, Any, torch.Tensor], None]
    ) -> np.ndarray:
        """The pipeline's float32 output as (variants, channels, samples)."""
        common = dict(
            prompt=params.prompt, negative_prompt=params.negative_prompt, num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale, num_waveforms_per_prompt=params.variants,
            generator=torch.Generator(device=self.device).manual_seed(seed), callback=on_step, callback_steps=1,
            output_type="np",
        )  # fmt: skip
        # diffusers 0.42 gives neither pipeline `callback_on_step_end`; the older per-step `callback` is what they have.
        if self.model_key == "stable-audio-open":
            return self.pipeline(audio_end_in_s=seconds, **common).audios  # (batch, channels, samples)
        # AudioLDM2 returns mono (batch, samples); with several variants it orders them best first by CLAP score.
        return self.pipeline(audio_length_in_s=seconds, **common).audios[:, None, :]


def _geometry(pipeline: DiffusionPipeline) -> _Geometry:
    if isinstance(pipeline, StableAudioPipeline):
        rate = int(pipeline.vae.config.sampling_rate)
        # The transformer's latent length times the VAE hop is all the audio one call makes (47.55 s for the
        # real model); the pipeline pads shorter requests to it and cuts the decoded audio.
        max_seconds = pipeline.transformer.config.sample_size * pipeline.vae.hop_length / rate
        return _Geometry(sample_rate=rate, min_seconds=1 / rate, max_seconds=max_seconds)
    assert isinstance(pipeline, AudioLDM2Pipeline)
    rate = int(pipeline.vocoder.config.sampling_rate)
    seconds_per_frame = float(np.prod(pipeline.vocoder.config.upsample_rates)) / rate
    # The pipeline rejects lengths under one VAE-downsampled mel frame (40 ms for the real model).
    return _Geometry(sample_rate=rate, min_seconds=seconds_per_frame * pipeline.vae_scale_factor, max_seconds=None)


def _fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Cut or zero-pad the last axis to exactly `samples` (the pipelines round lengths to their frame grid)."""
    if audio.shape[-1] >= samples:
        return audio[..., :samples]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, samples - audio.shape[-1])])
