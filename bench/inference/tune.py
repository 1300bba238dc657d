"""Benchmark for `tune`: our windowed engine vs WORLD (pyworld) called once on the whole file.

The input is voiced all the way through (a sung-like tone gliding between notes with vibrato), so both sides
resynthesize every sample: "direct" runs Harvest on the whole signal, the same note targets
(`inference.tune.corrected_f0`), CheapTrick + D4C + synthesis on the whole signal, writes it, and tracks the output
again (as ours does for pitch.json). Ours runs Harvest in 20 s chunks and WORLD in <= 20 s windows. 16 kHz mono
keeps the 20-minute memory run short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.params import TuneParams
from inference.tune import TuneEngine, build_engine, corrected_f0, resynthesize, track_f0

RATE = 16000


def make_input(minutes: float, folder: Path) -> Path:
    """Mono 16-bit: a harmonic tone stepping through notes every 0.5 s, 30 cents sharp, with 5.5 Hz vibrato."""

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        note = 57 + np.asarray((0, 2, 4, 5, 7, 5, 4, 2))[(n // (RATE // 2)) % 8]
        f0 = 440 * 2 ** ((note - 69) / 12 + (30 + 20 * np.sin(2 * np.pi * 5.5 * t)) / 1200)
        # Phase from the note's start keeps each block self-contained (write_wav asks for 10 s at a time).
        phase = 2 * np.pi * f0 * (n % (RATE // 2)) / RATE
        return 0.2 * sum(np.sin(k * phase) / k for k in range(1, 11))

    return write_wav(folder / f"voice_{minutes:g}min.wav", minutes, RATE, 1, samples)


def setup(scratch: Path) -> TuneEngine:
    return build_engine("dsp/tune", scratch)


def ours(engine: TuneEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, TuneParams(), out_dir, no_progress)


def direct(state: object, input_path: Path, out_dir: Path) -> None:
    x, rate = sf.read(str(input_path), dtype="float64")
    f0 = track_f0(x, rate)
    target = corrected_f0(f0, np.arange(12), strength=1.0, retune_ms=TuneParams().retune_ms)
    y = resynthesize(x, f0, target, rate)
    sf.write(str(out_dir / "tuned.wav"), np.clip(y, -1, 1), rate, subtype="PCM_24")
    track_f0(sf.read(str(out_dir / "tuned.wav"), dtype="float64")[0], rate)


CASES = [BenchCase("tune chromatic (pyworld Harvest + WORLD)", setup, ours, direct, make_input)]
