"""The shape of one inference benchmark case; `bench/inference/run.py` discovers `CASES` in sibling modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class BenchCase:
    name: str  # e.g. "separate demucs_unittest"
    setup: Callable[[Path], Any]  # builds or loads the model once (untimed); gets a scratch folder
    ours: Callable[[Any, Path, Path], None]  # (state, input file, out dir): our engine's run
    direct: Callable[[Any, Path, Path], None]  # the library called directly on the same model and input
    make_input: Callable[[float, Path], Path]  # (minutes, folder) -> an input file of that length
    # What the direct side does differently from ours, printed under the table; empty when both do the same work.
    direct_differs: str = ""


def write_wav(
    path: Path, minutes: float, rate: int, channels: int, samples: Callable[[np.ndarray], np.ndarray]
) -> Path:
    """A 16-bit wav of `minutes`, written 10 s at a time so a 20-minute input never sits in memory.

    `samples(n)` gives the audio at sample indices `n`, in order: shape (len(n),) for mono, else (len(n), channels).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, subtype="PCM_16") as out:
        for start in range(0, total, rate * 10):
            out.write(samples(np.arange(start, min(total, start + rate * 10))).astype(np.float32))
    return path


def voiced_bursts(minutes: float, folder: Path) -> Path:
    """Mono 44.1 kHz 16-bit audio with syllable-like voiced bursts and pauses (a speech stand-in for transcription
    benchmarks whose models are scripted, so the content does not matter)."""
    rate = 44_100

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / rate
        voice = np.sin(2 * np.pi * 180 * t) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
        return 0.3 * voice * (np.sin(2 * np.pi * 0.1 * t) > -0.5)

    return write_wav(folder / f"speech_{minutes:g}min.wav", minutes, rate, 1, samples)
