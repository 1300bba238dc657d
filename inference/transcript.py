"""Transcript files shared by the transcription engines: json (segments, words, language), txt, srt and vtt.

One writer for every engine (openai-whisper, faster-whisper, the builtin one). Segments are streamed: each is
appended to the four files as the engine yields it, so a long transcription never holds its segments (or their
words) in memory; only the joined text, which transcript.json carries, is kept until the end.

No torch here: the builtin engine writes the same files without loading whisper.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from inference.base import OutputFile, emit_partial

CONTENT_TYPES = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
}


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class DecoderStats:
    """Whisper's figures for how a segment was decoded, as both engines report them (and OpenAI's verbose_json
    segments carry): the window it came from (`seek`, in 10 ms mel frames), its tokens (timestamp tokens
    included), the temperature that produced it and the fallback checks' inputs."""

    seek: int
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None = None  # None when word timestamps were not asked for
    decoder: DecoderStats | None = None  # None from engines that do not decode (the builtin one)


def _seconds(value: float) -> float:
    return round(value, 3)


def segment_json(index: int, segment: Segment) -> dict[str, Any]:
    """A segment as transcript.json has it (and as its partial output is emitted)."""
    item: dict[str, Any] = {
        "id": index,
        "start": _seconds(segment.start),
        "end": _seconds(segment.end),
        "text": segment.text,
    }
    if segment.decoder is not None:
        stats = segment.decoder
        item.update(
            seek=stats.seek,
            tokens=list(stats.tokens),
            temperature=round(stats.temperature, 4),
            avg_logprob=round(stats.avg_logprob, 6),
            compression_ratio=round(stats.compression_ratio, 6),
            no_speech_prob=round(stats.no_speech_prob, 6),
        )
    if segment.words is not None:
        item["words"] = [
            {"word": w.word, "start": _seconds(w.start), "end": _seconds(w.end), "probability": round(w.probability, 4)}
            for w in segment.words
        ]
    return item


def _timestamp(seconds: float, decimal_marker: str) -> str:
    millis = max(0, round(seconds * 1000))  # round once, then split: 59.9996 s must not print as 00:00:60
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue and "-->" starts a timing line in both SRT and VTT: keep text on one safe line.
    return " ".join(text.split()).replace("-->", "->")


class TranscriptWriter:
    """Appends segments to open json / txt / srt / vtt streams as they come; `close` finishes the json.

    transcript.json is {"language", "task", "model", "duration", "segments": [...], "text"}: the joined text goes
    last because it is only known once every segment has been seen.
    """

    def __init__(
        self, *, json_out: TextIO, txt: TextIO, srt: TextIO, vtt: TextIO, language: str, task: str, model: str,
        duration: float,
    ) -> None:  # fmt: skip
        self.json_out, self.txt, self.srt, self.vtt = json_out, txt, srt, vtt
        self.count = 0
        self._texts: list[str] = []
        header = {"language": language, "task": task, "model": model, "duration": _seconds(duration)}
        self.json_out.write(json.dumps(header, ensure_ascii=False, indent=2)[:-2] + ',\n  "segments": [')
        self.vtt.write("WEBVTT\n\n")

    def add(self, segment: Segment) -> dict[str, Any]:
        """Write one segment; returns it as transcript.json has it."""
        data = segment_json(self.count, segment)
        item = json.dumps(data, ensure_ascii=False, indent=2).replace("\n", "\n    ")
        self.json_out.write(("," if self.count else "") + "\n    " + item)
        self.count += 1
        self._texts.append(segment.text)
        cue = _cue_text(segment.text)
        self.txt.write(f"{cue}\n")
        self.srt.write(f"{self.count}\n{_timestamp(segment.start, ',')} --> {_timestamp(segment.end, ',')}\n{cue}\n\n")
        self.vtt.write(f"{_timestamp(segment.start, '.')} --> {_timestamp(segment.end, '.')}\n{cue}\n\n")
        return data

    def close(self) -> None:
        text = json.dumps(" ".join(self._texts), ensure_ascii=False)
        self.json_out.write(("\n  ]" if self.count else "]") + f',\n  "text": {text}\n}}\n')


def _render(segments: Iterable[Segment], **header: Any) -> dict[str, str]:
    streams = {name: io.StringIO() for name in ("json_out", "txt", "srt", "vtt")}
    writer = TranscriptWriter(**streams, **header)
    for segment in segments:
        writer.add(segment)
    writer.close()
    return {name: stream.getvalue() for name, stream in streams.items()}


_NO_HEADER: dict[str, Any] = {"language": "", "task": "", "model": "", "duration": 0.0}


def write_json(segments: Iterable[Segment], *, language: str, task: str, model: str, duration: float) -> str:
    return _render(segments, language=language, task=task, model=model, duration=duration)["json_out"]


def write_txt(segments: Iterable[Segment]) -> str:
    return _render(segments, **_NO_HEADER)["txt"]


def write_srt(segments: Iterable[Segment]) -> str:
    return _render(segments, **_NO_HEADER)["srt"]


def write_vtt(segments: Iterable[Segment]) -> str:
    return _render(segments, **_NO_HEADER)["vtt"]


FILE_NAMES = {"json_out": "transcript.json", "txt": "transcript.txt", "srt": "transcript.srt", "vtt": "transcript.vtt"}


def write_transcript(
    out_dir: Path,
    segments: Iterable[Segment],
    *,
    language: str,
    task: str,
    model: str,
    duration: float,
    emit: bool = True,
) -> list[OutputFile]:
    """Stream `segments` into transcript.json / .txt / .srt / .vtt in `out_dir` (segments may be a generator), each
    segment also emitted as a partial output once written (`emit=False`: the engine emitted them as decoded)."""
    with ExitStack() as stack:
        streams = {
            key: stack.enter_context((out_dir / name).open("w", encoding="utf-8")) for key, name in FILE_NAMES.items()
        }
        writer = TranscriptWriter(**streams, language=language, task=task, model=model, duration=duration)
        for segment in segments:
            data = writer.add(segment)
            if emit:
                emit_partial(data)  # as decoded, when `segments` is the decoder's generator
        writer.close()
    metadata: dict[str, Any] = {"language": language, "segments": writer.count}
    return [
        OutputFile(name=name, path=out_dir / name, content_type=CONTENT_TYPES[name.rsplit(".", 1)[1]],
                   metadata=dict(metadata))
        for name in FILE_NAMES.values()
    ]  # fmt: skip
