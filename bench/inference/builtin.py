"""Benchmark cases for the builtin engine (no weights): the harness runs anywhere, and the 20-minute run shows
whether streaming keeps memory flat. "direct" does the same DSP one-shot on the whole file with soundfile + soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.builtin import BuiltinEngine, builtin_engine
from inference.params import SeparateParams, TranscribeParams

RATE = 44100
_CUTOFFS = (150.0, 150.0 * 40**0.5, 6000.0)  # the builtin's 4-stem band edges (geomspace 150..6000, 3 points)


def make_input(minutes: float, folder: Path) -> Path:
    """A stereo 16-bit wav of tones, bursts and hiss."""
    rng = np.random.default_rng(0)

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        gate = (np.sin(2 * np.pi * 0.25 * t) > -0.3).astype(np.float32)  # sound with pauses
        mono = gate * (0.2 * np.sin(2 * np.pi * 80 * t) + 0.2 * np.sin(2 * np.pi * 440 * t))
        return (mono + 0.01 * rng.standard_normal((2, t.size))).T

    return write_wav(folder / f"mix_{minutes:g}min.wav", minutes, RATE, 2, samples)


def _setup_separate(scratch: Path) -> BuiltinEngine:
    return builtin_engine("separate")


def _ours_separate(engine: BuiltinEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, SeparateParams(), out_dir, no_progress)


def _direct_separate(state: object, input_path: Path, out_dir: Path) -> None:
    data, rate = sf.read(str(input_path), dtype="float32")
    lows = [soxr.resample(soxr.resample(data, rate, round(2 * c), quality="HQ"), round(2 * c), rate, quality="HQ")
            for c in _CUTOFFS]  # fmt: skip
    lows = [np.pad(low[: len(data)], ((0, max(0, len(data) - len(low))), (0, 0))) for low in lows]
    edges = [np.zeros_like(data), *lows, data]
    for stem, index in (("bass", 0), ("vocals", 1), ("other", 2), ("drums", 3)):
        sf.write(str(out_dir / f"{stem}.wav"), edges[index + 1] - edges[index], rate, subtype="PCM_24")


def _setup_transcribe(scratch: Path) -> BuiltinEngine:
    return builtin_engine("transcribe")


def _ours_transcribe(engine: BuiltinEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, TranscribeParams(model="tiny"), out_dir, no_progress)


def _direct_transcribe(state: object, input_path: Path, out_dir: Path) -> None:
    data, rate = sf.read(str(input_path), dtype="float32")
    mono = soxr.resample(data.mean(axis=1), rate, 16000, quality="HQ")
    usable = len(mono) - len(mono) % 320
    levels = np.sqrt(np.mean(mono[:usable].reshape(-1, 320) ** 2, axis=1))
    (out_dir / "levels.npy").write_bytes((levels > 0.01).tobytes())


CASES = [
    BenchCase("builtin separate (4 bands)", _setup_separate, _ours_separate, _direct_separate, make_input),
    BenchCase(
        "builtin transcribe (VAD)",
        _setup_transcribe,
        _ours_transcribe,
        _direct_transcribe,
        make_input,
        direct_differs="20 ms RMS levels thresholded only: no region merging and no transcript files (json, txt, "
        "srt, vtt), so it does less work than ours",
    ),
]
