"""Songs with lyrics: ACE-Step 1.5 through diffusers' `AceStepPipeline`, one engine for three tasks.

- `song`: text + lyrics to `variants` songs (the pipeline's `text2music`), one batched call.
- `cover`: the input song re-made in another style (`task_type="cover"`: the input is VAE-encoded, turned into the
  model's 5 Hz semantic tokens and back, and conditions the generation; `strength` is `audio_cover_strength`).
- `repaint`: one span regenerated (`task_type="repaint"`: the span's latents are replaced by silence and masked as
  "generate"). The pipeline regenerates and re-normalises the WHOLE waveform (its VAE decodes every latent frame and
  scales the result to a -1 dBFS peak), so nothing outside the span would come back bit for bit. The engine therefore
  splices: the output is the decoded input outside [start_s, end_s] and the pipeline's output inside it, with a
  `REPAINT_FADE_S` (inference/song_common.py) linear crossfade just inside each join, after the generated audio is
  scaled to the input's level outside the span. Outside the span the output equals the input (decoded at the model's
  rate, in stereo) to the output format's resolution: one 24-bit step, 2**-23, for wav and flac.

The weights folder `weights_dir / model_key` is a diffusers pipeline folder (a hub snapshot or `save_pretrained`).
One pipeline is loaded per folder and shared by the three tasks' engines (the worker caches one engine per
(task, model)). Precision: bf16 on CUDA, the dtype diffusers' and ACE-Step's own examples load it in; fp32 on CPU.
The pipeline returns float32 audio either way.

Reproducibility: every run has a seed (picked and reported when not given). It seeds the pipeline's generator (the
initial noise) and, inside a forked RNG state, torch's global generator, which the VAE's `latent_dist.sample()` draws
from when a cover or repaint encodes its input. `song.json` records the params, the seed and the weights' revision.
Lyrics are user text: nothing here logs them.
"""

from __future__ import annotations

import json
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AceStepPipeline
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn
from inference.models import HUB_MANIFEST
from inference.params import SONG_MAX_SECONDS, CoverParams, RepaintParams, SongParams
from inference.song_common import output_names, splice, write_song_json

# Share of the progress bar the denoising loop covers; encoding comes before, decoding and writing after.
_DENOISE_START, _DENOISE_END = 0.05, 0.9
_TASK_TYPES = {SongParams: "text2music", CoverParams: "cover", RepaintParams: "repaint"}

_LOADED: dict[tuple[str, Path], SongEngine] = {}
_LOADING = threading.Lock()


def build_engine(model_key: str, weights_dir: Path, *, device: str | None = None) -> SongEngine:
    """The engine for `model_key`, loading its pipeline once per weights folder (slow for the real weights: ~11 GB), on
    `device`; None picks CUDA when available (a Modal worker passes "cpu" before its snapshot: inference/base.py
    `DeviceEngine`)."""
    folder = Path(weights_dir) / model_key
    with _LOADING:
        engine = _LOADED.get((model_key, folder))
        if engine is None:
            engine = _LOADED[(model_key, folder)] = _load(model_key, folder, device)
        elif device is not None and engine.device != torch.device(device):
            engine.to(device)
        return engine


def _load(model_key: str, folder: Path, device_name: str | None) -> SongEngine:
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers pipeline for {model_key} at {folder} (pull the model weights first)")
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = AceStepPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=_dtype(device))
    pipeline.set_progress_bar_config(disable=True)
    return SongEngine(model_key, pipeline.to(device), device, revision=_revision(folder))


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _revision(folder: Path) -> str | None:
    """The hub commit the weights were pulled at (`studio models pull` records it); None for a local folder."""
    try:
        return str(json.loads((folder / HUB_MANIFEST).read_text())["revision"])
    except (OSError, ValueError, KeyError):
        return None


class SongEngine:
    def __init__(
        self, model_key: str, pipeline: AceStepPipeline, device: torch.device, revision: str | None = None
    ) -> None:
        self.model_key = model_key
        self.pipeline = pipeline
        self.device = device
        self.revision = revision
        self.sample_rate = int(pipeline.sample_rate)

    def to(self, device: str | torch.device) -> SongEngine:
        """Move the pipeline (a worker loads on the CPU, then moves to the GPU after a snapshot restore)."""
        self.device = torch.device(device)
        self.pipeline = self.pipeline.to(self.device, _dtype(self.device))
        return self

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        if not isinstance(params, SongParams | CoverParams | RepaintParams):
            raise TypeError(f"the song engine cannot run {type(params).__name__}")
        if params.model != self.model_key:
            raise ValueError(f"this engine runs {self.model_key}, the job asks for {params.model}")
        seed = params.seed if params.seed is not None else secrets.randbelow(2**32)
        progress(0.0, "reading input" if input_path is not None else "encoding prompt")
        source = None if isinstance(params, SongParams) else self._source(input_path, params)
        steps = params.steps

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> None:
            progress(_DENOISE_START + (_DENOISE_END - _DENOISE_START) * min(1.0, (step + 1) / steps), "denoising")

        songs = self.generate(params, seed, source, on_step)  # (variants, 2, samples)
        progress(_DENOISE_END, "writing")
        if isinstance(params, RepaintParams):
            assert source is not None
            songs = splice(source, songs[0], params.start_s, params.end_s, self.sample_rate)[None]
        out_dir.mkdir(parents=True, exist_ok=True)
        seconds = songs.shape[-1] / self.sample_rate
        outputs = []
        for index, (name, song) in enumerate(zip(output_names(params), songs, strict=True), start=1):
            path = audio.encode(out_dir / f"{name}.{params.format}", song, self.sample_rate, params.format)
            metadata = {"model": self.model_key, "seed": seed, "sample_rate": self.sample_rate, "duration_s": seconds}
            if not isinstance(params, RepaintParams):
                metadata["variant"] = index
            outputs.append(OutputFile(path.name, path, audio.CONTENT_TYPES[params.format], metadata))
        outputs.append(
            write_song_json(
                out_dir, params, model=self.model_key, revision=self.revision, seed=seed,
                sample_rate=self.sample_rate, duration_s=seconds, outputs=outputs,
            )
        )  # fmt: skip
        progress(1.0, None)
        metrics = {"output_seconds": len(songs) * seconds}
        if source is not None:
            metrics["audio_seconds"] = source.shape[-1] / self.sample_rate
        return EngineResult(outputs=outputs, metrics=metrics)

    def generate(
        self, params: SongParams | CoverParams | RepaintParams, seed: int, source: np.ndarray | None, on_step: Any
    ) -> np.ndarray:
        """The pipeline's float32 output, (variants, channels, samples), cut to the requested or input length."""
        variants = 1 if isinstance(params, RepaintParams) else params.variants
        call: dict[str, Any] = dict(
            prompt=[params.prompt] * variants, lyrics=[params.lyrics] * variants, vocal_language=params.vocal_language,
            num_inference_steps=params.steps, bpm=params.bpm, keyscale=params.key, timesignature=params.time_signature,
            task_type=_TASK_TYPES[type(params)], guidance_scale=1.0, output_type="np",
            generator=torch.Generator(device=self.device).manual_seed(seed), callback_on_step_end=on_step,
        )  # fmt: skip
        if isinstance(params, SongParams):
            call["audio_duration"] = params.duration_s
            samples = max(1, round(params.duration_s * self.sample_rate))
        else:
            assert source is not None
            call["src_audio"] = torch.from_numpy(source)
            call["audio_duration"] = source.shape[-1] / self.sample_rate
            samples = source.shape[-1]
        if isinstance(params, CoverParams):
            if self.pipeline.audio_tokenizer is None or self.pipeline.audio_token_detokenizer is None:
                # The pipeline's cover path tokenizes the input with these optional components (prepare_src_latents).
                raise EngineError(
                    f"{self.model_key} was installed without its audio tokenizer, which cover needs",
                    code="cover_unavailable",
                )
            call["audio_cover_strength"] = params.strength
        if isinstance(params, RepaintParams):
            call["repainting_start"], call["repainting_end"] = params.start_s, params.end_s
        with torch.inference_mode(), torch.random.fork_rng(devices=_cuda_devices(self.device)):
            torch.manual_seed(seed)
            songs = self.pipeline(**call).audios
        return _fit_length(np.asarray(songs, dtype=np.float32), samples)

    def _source(self, input_path: Path | None, params: CoverParams | RepaintParams) -> np.ndarray:
        """The input at the model's rate in stereo (mono is doubled; more channels are mixed down)."""
        if input_path is None:
            raise EngineError("this task needs an audio file", code="missing_input")
        info = audio.probe(input_path)
        if info.duration_s > SONG_MAX_SECONDS:
            raise EngineError(
                f"the input is {info.duration_s:.1f} s long; {self.model_key} takes songs up to {SONG_MAX_SECONDS:g} s",
                code="input_too_long",
            )
        stereo = info.channels == 2
        source = audio.decode(input_path, sample_rate=self.sample_rate, mono=not stereo)
        if not stereo:
            source = np.repeat(source[:1], 2, axis=0)
        if isinstance(params, RepaintParams) and params.end_s > source.shape[-1] / self.sample_rate:
            raise EngineError(
                f"end_s ({params.end_s:g}) is past the end of the input ({source.shape[-1] / self.sample_rate:.3f} s)",
                code="span_outside_input",
            )
        return source


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _fit_length(audio_batch: np.ndarray, samples: int) -> np.ndarray:
    """Cut or zero-pad the last axis to exactly `samples` (the pipeline rounds lengths up to its latent grid)."""
    if audio_batch.shape[-1] >= samples:
        return audio_batch[..., :samples]
    return np.pad(audio_batch, [(0, 0)] * (audio_batch.ndim - 1) + [(0, samples - audio_batch.shape[-1])])
