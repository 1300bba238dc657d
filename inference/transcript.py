"""Transcript files shared by the transcription engines: json (segments, words, language), txt, srt and vtt.

No torch here: the builtin engine writes the same files without loading whisper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.base import OutputFile

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
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None = None  # None when word timestamps were not asked for


def _seconds(value: float) -> float:
    return round(value, 3)


def write_json(segments: list[Segment], *, language: str, task: str, model: str, duration: float) -> str:
    def segment_json(index: int, segment: Segment) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": index,
            "start": _seconds(segment.start),
            "end": _seconds(segment.end),
            "text": segment.text,
        }
        if segment.words is not None:
            item["words"] = [
                {
                    "word": w.word,
                    "start": _seconds(w.start),
                    "end": _seconds(w.end),
                    "probability": round(w.probability, 4),
                }
                for w in segment.words
            ]
        return item

    document = {
        "language": language,
        "task": task,
        "model": model,
        "duration": _seconds(duration),
        "text": " ".join(segment.text for segment in segments),
        "segments": [segment_json(index, segment) for index, segment in enumerate(segments)],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def write_txt(segments: list[Segment]) -> str:
    return "".join(f"{_cue_text(segment.text)}\n" for segment in segments)


def _timestamp(seconds: float, decimal_marker: str) -> str:
    millis = max(0, round(seconds * 1000))  # round once, then split: 59.9996 s must not print as 00:00:60
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue and "-->" starts a timing line in both SRT and VTT: keep text on one safe line.
    return " ".join(text.split()).replace("-->", "->")


def write_srt(segments: list[Segment]) -> str:
    return "".join(
        f"{index}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{_cue_text(s.text)}\n\n"
        for index, s in enumerate(segments, start=1)
    )


def write_vtt(segments: list[Segment]) -> str:
    cues = "".join(
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{_cue_text(s.text)}\n\n" for s in segments
    )
    return f"WEBVTT\n\n{cues}"


def write_transcript(
    out_dir: Path, segments: list[Segment], *, language: str, task: str, model: str, duration: float
) -> list[OutputFile]:
    """Write transcript.json / .txt / .srt / .vtt into `out_dir`."""
    files = {
        "transcript.json": write_json(segments, language=language, task=task, model=model, duration=duration),
        "transcript.txt": write_txt(segments),
        "transcript.srt": write_srt(segments),
        "transcript.vtt": write_vtt(segments),
    }
    outputs = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        metadata: dict[str, Any] = {"language": language, "segments": len(segments)}
        outputs.append(OutputFile(name=name, path=path, content_type=CONTENT_TYPES[path.suffix[1:]], metadata=metadata))
    return outputs
