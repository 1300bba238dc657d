"""Benchmark cases for `generate`: our engine vs the diffusers pipeline called directly with the same arguments.

Real Stable Audio Open / AudioLDM2 weights cannot be fetched offline, so both cases run the TINY random pipelines
from tests/tiny_diffusers.py (saved and loaded through `build_engine`, the production path). The figures therefore
measure our overhead around the pipeline (params, seeding, progress callback, trimming, 24-bit wav encoding), not
model speed. Generation has no input audio: `make_input` writes a text file holding the prompt and ignores
`minutes`; every run makes VARIANTS variants of a clip of DURATION_S with STEPS denoising steps. Run it as
`python -m bench.inference.run --only generate --minutes 1 0`: the "s/audio-min" columns then read seconds per job
(and the long-input memory run, which would repeat the short one, is skipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from bench.inference.common import BenchCase
from inference.base import no_progress
from inference.generate import GenerateEngine, build_engine
from inference.params import GenerateParams
from tests.tiny_diffusers import STABLE_AUDIO_MAX_SECONDS, build_audioldm2, build_stable_audio

STEPS = 20
VARIANTS = 2
SEED = 0
DURATION_S = {"stable-audio-open": STABLE_AUDIO_MAX_SECONDS, "audioldm2": 0.5}
_BUILDERS = {"stable-audio-open": build_stable_audio, "audioldm2": build_audioldm2}


def _make_prompt(minutes: float, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompt.txt"
    path.write_text("upbeat electronic music with heavy drums\n")
    return path


def _setup(model_key: str) -> Any:
    def setup(scratch: Path) -> GenerateEngine:
        _BUILDERS[model_key](scratch / model_key)
        return build_engine(model_key, scratch)

    return setup


def _params(engine: GenerateEngine, prompt_file: Path) -> GenerateParams:
    return GenerateParams(
        model=engine.model_key,
        prompt=prompt_file.read_text().strip(),
        duration_s=DURATION_S[engine.model_key],
        steps=STEPS,
        seed=SEED,
        variants=VARIANTS,
    )


def _ours(engine: GenerateEngine, prompt_file: Path, out_dir: Path) -> None:
    engine.run(None, _params(engine, prompt_file), out_dir, no_progress)


def _direct(engine: GenerateEngine, prompt_file: Path, out_dir: Path) -> None:
    params = _params(engine, prompt_file)
    length = {"audio_end_in_s" if engine.model_key == "stable-audio-open" else "audio_length_in_s": params.duration_s}
    with torch.inference_mode():
        audios = engine.pipeline(
            params.prompt,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            num_waveforms_per_prompt=params.variants,
            generator=torch.Generator(device=engine.device).manual_seed(SEED),
            output_type="np",
            **length,
        ).audios
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, audio in enumerate(audios, start=1):
        sf.write(out_dir / f"variant_{index}.wav", audio.T, engine.sample_rate)


CASES: list[BenchCase] = [
    BenchCase(
        name=f"generate {model_key} (tiny random pipeline)",
        setup=_setup(model_key),
        ours=_ours,
        direct=_direct,
        make_input=_make_prompt,
    )
    for model_key in ("stable-audio-open", "audioldm2")
]
