"""Benchmark cases for `separate`: our engine vs demucs's `apply_model` on the whole track, same model and input.

Real htdemucs weights cannot be fetched offline, so the model is a SMALL RANDOM HTDemucs (the htdemucs class with
its real 7.8 s segment, at a fraction of the width) saved as a demucs `.th` repo and loaded through
`build_engine`. Speed figures therefore show our overhead (decode, windows, cross-fades, streaming writes) around
apply_model, not htdemucs's speed; peak memory shows how the whole-track output tensors grow with duration.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import yaml
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs
from demucs.states import get_state, save_with_checksum

from bench.inference.common import BenchCase, write_wav
from inference import audio
from inference.base import no_progress
from inference.params import DEMUCS_SOURCES, SeparateParams
from inference.separate import SeparateEngine, build_engine

RATE = 44100
PARAMS = SeparateParams(model="htdemucs", shifts=1, overlap=0.25)


def make_input(minutes: float, folder: Path) -> Path:
    """A stereo 16-bit wav of gated tones and noise."""
    rng = np.random.default_rng(0)

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        gate = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float32)
        tone = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * gate * np.sin(2 * np.pi * 440 * t)
        return (tone + 0.05 * rng.standard_normal((2, t.size))).T

    return write_wav(folder / f"mix_{minutes:g}min.wav", minutes, RATE, 2, samples)


def setup(scratch: Path) -> SeparateEngine:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HTDemucs(
            list(DEMUCS_SOURCES["htdemucs"]),
            channels=8,
            depth=4,
            dconv_comp=4,
            t_layers=1,
            t_heads=2,
            segment=Fraction(39, 5),
        )
    repo = scratch / "demucs" / "htdemucs"
    repo.mkdir(parents=True, exist_ok=True)
    args, kwargs = model._init_args_kwargs
    save_with_checksum(
        {"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, True)},
        repo / "b3nchmark.th",
    )
    (repo / "htdemucs.yaml").write_text(yaml.safe_dump({"models": ["b3nchmark"]}))
    return build_engine("demucs/htdemucs", scratch)


def ours(engine: SeparateEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, PARAMS, out_dir, no_progress)


def direct(engine: SeparateEngine, input_path: Path, out_dir: Path) -> None:
    """What demucs.api.Separator.separate_tensor + save does: whole-track normalise, apply_model, write each stem."""
    mix = torch.from_numpy(audio.decode(input_path, sample_rate=engine.samplerate))
    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    with torch.inference_mode():
        stems = apply_model(
            engine.model,
            ((mix - mean) / std)[None],
            shifts=PARAMS.shifts,
            split=True,
            overlap=PARAMS.overlap,
            device=engine.device,
        )[0]
    stems = stems * std + mean
    for name, stem in zip(engine.sources, stems, strict=True):
        audio.encode(out_dir / f"{name}.wav", stem.numpy(), engine.samplerate, "wav")


CASES: list[BenchCase] = [
    BenchCase(
        name="separate htdemucs (small random model)", setup=setup, ours=ours, direct=direct, make_input=make_input
    ),
]
