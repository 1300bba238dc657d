"""Benchmark for the transcribe engine, on the CPU with the tiny scripted whisper checkpoint from
tests/tiny_whisper.py (real weights cannot be downloaded here): it measures our overhead around whisper (decoding
with PyAV, progress hook, writers) and the peak memory of a 20-minute input, not whisper's speed on real models.

"direct" is whisper used directly on the same model, as its CLI does: soundfile + soxr to 16 kHz mono,
`whisper.transcribe`, and whisper's own writers for the four files ours writes (json, txt, srt, vtt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import whisper
from whisper.utils import get_writer

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.params import TranscribeParams
from inference.transcribe import TranscribeEngine, build_engine
from tests.tiny_whisper import build_tiny_whisper

RATE = 44_100


def make_input(minutes: float, folder: Path) -> Path:
    """Mono 44.1 kHz 16-bit audio with syllable-like voiced bursts and pauses."""

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        voice = np.sin(2 * np.pi * 180 * t) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
        return 0.3 * voice * (np.sin(2 * np.pi * 0.1 * t) > -0.5)

    return write_wav(folder / f"speech_{minutes:g}min.wav", minutes, RATE, 1, samples)


def _setup(scratch: Path) -> TranscribeEngine:
    model_key, sha256 = build_tiny_whisper(scratch)
    return build_engine(model_key, scratch, device="cpu", sha256=sha256)


def _ours(engine: TranscribeEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, TranscribeParams(), out_dir, no_progress)


def _direct(engine: TranscribeEngine, input_path: Path, out_dir: Path) -> None:
    data, rate = sf.read(str(input_path), dtype="float32", always_2d=True)
    samples = soxr.resample(data.mean(axis=1), rate, whisper.audio.SAMPLE_RATE, quality="HQ").astype(np.float32)
    result = whisper.transcribe(engine.model, samples, fp16=False)
    for output_format in ("json", "txt", "srt", "vtt"):
        get_writer(output_format, str(out_dir))(result, str(input_path))


CASES = [BenchCase("transcribe tiny scripted whisper (CPU)", _setup, _ours, _direct, make_input)]
