"""Benchmark for `fx`: our streaming engine vs one `pedalboard.Pedalboard` call on the whole file.

"direct": soundfile reads the whole file, the same chain (built from the same validated params) runs once on it
plus the tail, soundfile writes 24-bit. Ours decodes, processes and encodes 10 s blocks (`reset=False`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.fx import FxEngine, build_board, build_engine
from inference.params import FxParams

RATE = 44100
PARAMS = FxParams(
    chain=[
        {"effect": "highpass", "params": {"cutoff_frequency_hz": 80}},
        {"effect": "compressor", "params": {"threshold_db": -18, "ratio": 3}},
        {"effect": "chorus"},
        {"effect": "delay", "params": {"delay_seconds": 0.25, "feedback": 0.3, "mix": 0.2}},
        {"effect": "reverb", "params": {"room_size": 0.6}},
        {"effect": "limiter", "params": {"threshold_db": -3}},
    ],
    tail_s=2.0,
)


def make_input(minutes: float, folder: Path) -> Path:
    """A stereo 16-bit wav: a gated 220 Hz tone and hiss."""
    rng = np.random.default_rng(0)

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (t % 1 < 0.3)
        return np.stack([tone, tone]).T + 0.02 * rng.standard_normal((t.size, 2))

    return write_wav(folder / f"fx_{minutes:g}min.wav", minutes, RATE, 2, samples)


def setup(scratch: Path) -> FxEngine:
    return build_engine("dsp/fx", scratch)


def ours(engine: FxEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, PARAMS, out_dir, no_progress)


def direct(state: object, input_path: Path, out_dir: Path) -> None:
    data, rate = sf.read(str(input_path), dtype="float32", always_2d=True)
    padded = np.concatenate([data, np.zeros((round(PARAMS.tail_s * rate), data.shape[1]), np.float32)])
    out = build_board(PARAMS)(padded.T, rate)
    sf.write(str(out_dir / "processed.wav"), np.clip(out, -1, 1).T, rate, subtype="PCM_24")


CASES = [BenchCase("fx 6-effect chain (pedalboard)", setup, ours, direct, make_input)]
