"""Benchmark for `master`: our streaming engine vs the same work done the obvious way on whole arrays.

"direct": the whole file decoded at once with the project's decoder (`inference.audio.decode`, as in the fx bench),
pyloudnorm's `Meter.integrated_loudness` and a soxr 4x true peak on it (ours reports the input's too), then the same
render loop as ours (same pedalboard chain, same drive/trim corrections), each render one pedalboard call on the
whole array, pyloudnorm for loudness and soxr 4x for true peak, then the file written and measured once more.
Ours streams every pass in 10 s blocks, so its peak memory should stay flat from 1 to 20 minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf
import soxr

from bench.inference.common import BenchCase, write_wav
from inference import audio
from inference.base import no_progress
from inference.master import (
    LOUDNESS_TOLERANCE_LU,
    MAX_RENDERS,
    TRUE_PEAK_MARGIN_DB,
    MasterEngine,
    _drive_step,
    build_board,
    build_engine,
    chain_description,
)
from inference.params import MasterParams

RATE = 44100


def make_input(minutes: float, folder: Path) -> Path:
    """A stereo 16-bit mix at about -24 LUFS: bass, chords, a kick every half second, hiss."""
    rng = np.random.default_rng(0)

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        bass = 0.15 * np.sin(2 * np.pi * 55 * 2 ** (np.floor(t) % 4 / 12) * t)
        chords = sum(0.04 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
        kick = 0.3 * np.exp(-((t % 0.5) * 30)) * np.sin(2 * np.pi * 60 * (t % 0.5))
        mono = bass + chords + kick
        return np.stack([mono, 0.9 * mono]).T + 0.01 * rng.standard_normal((t.size, 2))

    return write_wav(folder / f"mix_{minutes:g}min.wav", minutes, RATE, 2, samples)


def setup(scratch: Path) -> MasterEngine:
    return build_engine("dsp/master", scratch)


def ours(engine: MasterEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, MasterParams(), out_dir, no_progress)


def _true_peak_db(x: np.ndarray, rate: int) -> float:
    return float(20 * np.log10(np.max(np.abs(soxr.resample(x, rate, 4 * rate)))))


def direct(state: object, input_path: Path, out_dir: Path) -> None:
    params = MasterParams()
    data, rate = audio.decode(input_path).T, audio.probe(input_path).sample_rate
    meter = pyloudnorm.Meter(rate)
    input_lufs = meter.integrated_loudness(data)
    (out_dir / "input.txt").write_text(f"{input_lufs} {_true_peak_db(data, rate)}")
    trim = params.ceiling_dbtp - TRUE_PEAK_MARGIN_DB
    drive = params.target() - trim - input_lufs
    history: list[tuple[float, float]] = []
    for renders in range(1, MAX_RENDERS + 1):
        board = build_board(chain_description(params.preset, params.target(), drive, trim, eq=True))
        out = np.clip(board(data.T, rate), -1.0, 1.0).T
        lufs, peak = meter.integrated_loudness(out), _true_peak_db(out, rate)
        history.append((drive, lufs - trim))
        peak_ok = peak <= params.ceiling_dbtp
        if abs(lufs - params.target()) <= LOUDNESS_TOLERANCE_LU and peak_ok or renders == MAX_RENDERS:
            break
        if not peak_ok:
            trim -= peak - (params.ceiling_dbtp - TRUE_PEAK_MARGIN_DB)
        drive += _drive_step(history, params.target() - trim)
    sf.write(str(out_dir / "mastered.wav"), out, rate, subtype="PCM_24")
    written, _ = sf.read(str(out_dir / "mastered.wav"), always_2d=True)
    (out_dir / "report.txt").write_text(f"{meter.integrated_loudness(written)} {_true_peak_db(written, rate)}")


CASES = [BenchCase("master neutral -14 LUFS (pedalboard + pyloudnorm)", setup, ours, direct, make_input)]
