"""Benchmark for `fx`: our streaming engine vs one `pedalboard.Pedalboard` call on the whole file.

"direct": the whole file decoded at once with the project's decoder (`inference.audio.decode`, PyAV: the decoding
work is the same on both sides; libsndfile would be ~0.07 CPU-s per audio minute cheaper on wav, but it cannot read
the mp3/m4a inputs the product takes), the same chain (built from the same validated params) run once on it plus the
tail, soundfile writing 24-bit. Ours decodes, processes and encodes 10 s blocks (`reset=False`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bench.inference.common import BenchCase, write_wav
from inference import audio
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
    data, rate = audio.decode(input_path), audio.probe(input_path).sample_rate
    padded = np.concatenate([data, np.zeros((data.shape[0], round(PARAMS.tail_s * rate)), np.float32)], axis=1)
    out = build_board(PARAMS)(padded, rate)
    sf.write(str(out_dir / "processed.wav"), np.clip(out, -1, 1).T, rate, subtype="PCM_24")


CASES = [BenchCase("fx 6-effect chain (pedalboard)", setup, ours, direct, make_input)]
