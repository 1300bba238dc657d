"""faster-whisper's two transcribe modes on long audio with the same results in bounded memory.

`BatchedInferencePipeline.transcribe` (faster-whisper 1.2.1) holds several whole-input copies: Silero VAD pads a
copy of the samples and builds a 1.125x second one (each 512-sample window behind its 64-sample context) for the
ONNX model; `collect_chunks` concatenates the speech into <= 30 s chunks (~1x the audio); then every chunk's
log-mel is computed up front and stacked (2 x 0.96 MB per chunk at 80 mels), all held for the whole decode.
`WhisperModel.transcribe` (sequential) makes the same two VAD copies before concatenating the speech. Here:

- `speech_probabilities` builds the same ONNX input rows one run of 10000 windows at a time (the library's batch,
  23 MB) from the samples, carrying the LSTM state (h, c) and the last window's tail as it does, so the
  probabilities are the library's to the bit; `speech_timestamps` is the library's rule that turns them into speech
  spans, and `group_chunks` its grouping of spans into <= 30 s chunks, both ported (the tests compare each with the
  library's function).
- `transcribe_batched` then calls the library's own `BatchedInferencePipeline.transcribe` once per batch of chunks,
  through its public `clip_timestamps` mode: each call gets one batch's chunks laid out at their positions on the
  speech-only timeline the library decodes on (the speech spans back to back), so the chunk offsets, the features,
  the batches, the prompts and every decoded token are what one call over the whole input gives. The timeline is a
  fresh `np.zeros` per call: Linux maps a large zeroed allocation lazily, so only the batch's pages (<= 15 MB at
  batch 8) become resident. What one call keeps across batches is kept across calls (the segment ids, and the
  word-timing clock `last_speech_timestamp`), and the library's `restore_speech_timestamps` maps the times back.
- `transcribe_sequential` hands `WhisperModel.transcribe` the speech already concatenated, with VAD off, and maps
  the times back the same way: the library's own VAD step does exactly that, after its two copies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import Segment, TranscriptionInfo, restore_speech_timestamps
from faster_whisper.vad import VadOptions, get_vad_model

WINDOW = 512  # Silero VAD's window at 16 kHz, in samples
CONTEXT = 64  # samples of the previous window in front of each window
WINDOWS_PER_RUN = 10_000  # windows per ONNX call, as the library's SileroVADModel runs them
STATE_SHAPE = (1, 1, 128)  # the LSTM's h and c


def speech_probabilities(samples: np.ndarray, windows_per_run: int = WINDOWS_PER_RUN) -> np.ndarray:
    """Silero VAD's speech probability per 512-sample window, equal to faster-whisper's `get_speech_timestamps`
    input: the samples zero-padded to whole windows (always at least one sample of padding), each window behind the
    previous window's last 64 samples (zeros for the first), the last window's own last 64 samples zeroed (a side
    effect of how the library builds its contexts, kept), the ONNX model run `windows_per_run` rows at a time with
    h and c carried. Only one run's rows exist at a time."""
    session = get_vad_model().session
    n_windows = len(samples) // WINDOW + 1
    h, c = np.zeros(STATE_SHAPE, np.float32), np.zeros(STATE_SHAPE, np.float32)
    previous_tail = np.zeros(CONTEXT, np.float32)
    runs = []
    for first in range(0, n_windows, windows_per_run):
        last = min(n_windows, first + windows_per_run)
        rows = np.zeros((last - first, CONTEXT + WINDOW), np.float32)
        block = samples[first * WINDOW : last * WINDOW]
        whole = len(block) // WINDOW
        rows[:whole, CONTEXT:] = block[: whole * WINDOW].reshape(whole, WINDOW)
        if whole < len(rows):  # the input's end: a partial window, then zeros
            rows[whole, CONTEXT : CONTEXT + len(block) - whole * WINDOW] = block[whole * WINDOW :]
        rows[0, :CONTEXT] = previous_tail
        rows[1:, :CONTEXT] = rows[:-1, -CONTEXT:]
        previous_tail = rows[-1, -CONTEXT:].copy()
        if last == n_windows:
            rows[-1, -CONTEXT:] = 0.0
        probabilities, h, c = session.run(None, {"input": rows, "h": h, "c": c})
        runs.append(probabilities)
    return np.concatenate(runs)


def speech_timestamps(
    probabilities: np.ndarray, n_samples: int, options: VadOptions, sampling_rate: int = 16_000
) -> list[dict[str, int]]:
    """Speech spans ({"start", "end"} in samples) from per-window probabilities: faster-whisper 1.2.1's
    `get_speech_timestamps` rule (after its model call), ported unchanged in behaviour, quirks included."""
    threshold = options.threshold
    neg_threshold = max(threshold - 0.15, 0.01) if options.neg_threshold is None else options.neg_threshold
    min_speech_samples = sampling_rate * options.min_speech_duration_ms / 1000
    speech_pad_samples = sampling_rate * options.speech_pad_ms / 1000
    max_speech_samples = sampling_rate * options.max_speech_duration_s - WINDOW - 2 * speech_pad_samples
    min_silence_samples = sampling_rate * options.min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = sampling_rate * 98 / 1000

    triggered = False
    speeches: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    temp_end = 0  # where a possible end of speech began (some silence is tolerated)
    prev_end = next_start = 0  # a split point, for when a span reaches the maximum length
    for i, probability in enumerate(probabilities):
        position = WINDOW * i
        if probability >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = position
        if probability >= threshold and not triggered:
            triggered = True
            current["start"] = position
            continue
        if triggered and position - current["start"] > max_speech_samples:
            if prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:  # silence since, and not speech again yet
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
            else:
                current["end"] = position
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if probability < neg_threshold and triggered:
            if not temp_end:
                temp_end = position
            if position - temp_end > min_silence_samples_at_max_speech:
                prev_end = temp_end
            if position - temp_end < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
    if current and n_samples - current["start"] > min_speech_samples:
        current["end"] = n_samples
        speeches.append(current)

    # Pad each span, splitting short silences between neighbours.
    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - speech_pad_samples))
        if i != len(speeches) - 1:
            following = speeches[i + 1]
            silence = following["start"] - speech["end"]
            if silence < 2 * speech_pad_samples:
                speech["end"] += int(silence // 2)
                following["start"] = int(max(0, following["start"] - silence // 2))
            else:
                speech["end"] = int(min(n_samples, speech["end"] + speech_pad_samples))
                following["start"] = int(max(0, following["start"] - speech_pad_samples))
        else:
            speech["end"] = int(min(n_samples, speech["end"] + speech_pad_samples))
    return speeches


def group_chunks(speech: list[dict[str, int]], max_duration: float, sampling_rate: int = 16_000) -> list[list[dict]]:
    """faster-whisper's `collect_chunks` grouping: spans in order, a new chunk whenever the next span would take the
    current one past `max_duration` seconds (so a first span that long leaves an empty first chunk, as there)."""
    chunks: list[list[dict]] = [[]]
    length = 0
    for span in speech:
        if length + span["end"] - span["start"] > max_duration * sampling_rate:
            chunks.append([span])
            length = span["end"] - span["start"]
        else:
            chunks[-1].append(span)
            length += span["end"] - span["start"]
    return chunks


def clip_seconds(sample: int, sampling_rate: int = 16_000) -> float:
    """A time in seconds that the library's clip conversion, `int(seconds * sampling_rate)`, maps back to `sample`
    (sample / rate alone rounds below it for ~1 % of integers)."""
    seconds = sample / sampling_rate
    if int(seconds * sampling_rate) != sample:
        seconds = float(np.nextafter(seconds, math.inf))
    assert int(seconds * sampling_rate) == sample
    return seconds


@dataclasses.dataclass(frozen=True)
class _Batch:
    """The chunks of one library call: their audio spans and their clips on the timeline it decodes."""

    spans: list[list[dict[str, int]]]  # per chunk, the spans of the samples it is made of (VAD), or one clip
    clips: list[dict[str, int]]  # per chunk, its start and end sample on the timeline


def transcribe_batched(
    model: WhisperModel,
    samples: np.ndarray,
    *,
    batch_size: int,
    vad_filter: bool = True,
    clip_timestamps: list[dict[str, float]] | None = None,
    language: str | None = None,
    language_detection_segments: int = 1,
    **options: Any,
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """`BatchedInferencePipeline(model).transcribe(samples, ...)` for 16 kHz mono float32 samples: the same segments
    and info, without the library's whole-input copies. Speech chunks come from Silero VAD (`vad_filter`), or from
    `clip_timestamps` (seconds) as the library takes them; the other options reach the library unchanged."""
    sampling_rate = model.feature_extractor.sampling_rate
    chunk_length = options.pop("chunk_length", None) or model.feature_extractor.chunk_length
    pipeline = BatchedInferencePipeline(model)  # ours alone: its word-timing clock is carried between our calls
    if clip_timestamps:
        clips = [{key: int(value * sampling_rate) for key, value in clip.items()} for clip in clip_timestamps]
        speech, vad_options, timeline, restore = clips, options.pop("vad_parameters", None), samples, False
        chunks = [[clip] for clip in clips]
    elif vad_filter:
        if options.pop("vad_parameters", None) is not None:
            raise ValueError("vad_parameters: only the library's defaults for the batched pipeline are supported")
        vad_options = VadOptions(max_speech_duration_s=chunk_length, min_silence_duration_ms=160)
        speech = speech_timestamps(speech_probabilities(samples), len(samples), vad_options, sampling_rate)
        chunks, timeline, restore = group_chunks(speech, chunk_length, sampling_rate), None, True
    else:
        raise ValueError("the batched pipeline needs vad_filter or clip_timestamps to cut the audio into chunks")

    batches = _batches(chunks, clip_mode=timeline is not None, batch_size=batch_size)
    detecting = language is None and model.model.is_multilingual
    if detecting:  # the first call must see the features the library's language detection reads
        needed = language_detection_segments * model.feature_extractor.nb_max_frames
        first = chunks_holding_frames(
            [c["end"] - c["start"] for b in batches for c in b.clips], needed, model.feature_extractor.hop_length
        )
        merged = math.ceil(first / batch_size)
        batches[:merged] = [
            _Batch([s for b in batches[:merged] for s in b.spans], [c for b in batches[:merged] for c in b.clips])
        ]

    def call(batch: _Batch, language: str | None) -> tuple[Iterator[Segment], TranscriptionInfo]:
        audio = timeline if timeline is not None else _timeline(samples, batch)
        seconds = [
            {"start": clip_seconds(c["start"], sampling_rate), "end": clip_seconds(c["end"], sampling_rate)}
            for c in batch.clips
        ]
        return pipeline.transcribe(
            audio,
            batch_size=batch_size,
            language=language,
            clip_timestamps=seconds,
            vad_parameters=vad_options,
            chunk_length=chunk_length,
            language_detection_segments=language_detection_segments,
            **options,
        )

    first_segments, info = call(batches[0], language)
    info = dataclasses.replace(
        info,
        duration=samples.shape[0] / sampling_rate,
        duration_after_vad=sum(s["end"] - s["start"] for s in speech) / sampling_rate,
        transcription_options=dataclasses.replace(info.transcription_options, clip_timestamps=speech),
    )

    def segments() -> Iterator[Segment]:
        number, clock = 0, 0.0
        for index, batch in enumerate(batches):
            batch_segments = first_segments if index == 0 else call(batch, info.language)[0]
            pipeline.last_speech_timestamp = clock  # the library resets it when a call's segments run out
            for segment in batch_segments:
                clock = pipeline.last_speech_timestamp  # set by the batch these segments come from
                number += 1
                segment.id = number
                yield segment

    # Times on the speech-only timeline back to the input's, as the library does after VAD.
    return (restore_speech_timestamps(segments(), speech, sampling_rate) if restore else segments()), info


def transcribe_sequential(
    model: WhisperModel, samples: np.ndarray, *, vad_filter: bool = False, **options: Any
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """`model.transcribe(samples, ...)` for 16 kHz mono float32 samples: the same segments and info; with
    `vad_filter`, Silero VAD runs streamed and only the speech, concatenated (what the library decodes), is copied."""
    if not vad_filter or options.get("clip_timestamps", "0") != "0":  # no VAD run: the library copies nothing
        return model.transcribe(samples, vad_filter=vad_filter, **options)
    if options.pop("vad_parameters", None) is not None:
        raise ValueError("vad_parameters: only the library's defaults for sequential decoding are supported")
    sampling_rate = model.feature_extractor.sampling_rate
    vad_options = VadOptions()  # the sequential mode's defaults
    speech = speech_timestamps(speech_probabilities(samples), len(samples), vad_options, sampling_rate)
    speech_audio = np.concatenate([samples[s["start"] : s["end"]] for s in speech] or [np.zeros(0, np.float32)])
    segments, info = model.transcribe(speech_audio, vad_filter=False, **options)
    info = dataclasses.replace(info, duration=samples.shape[0] / sampling_rate, vad_options=vad_options)
    return (restore_speech_timestamps(segments, speech, sampling_rate) if speech else segments), info


def _batches(chunks: list[list[dict[str, int]]], *, clip_mode: bool, batch_size: int) -> list[_Batch]:
    """Chunks `batch_size` at a time, with their clips: in clip mode the clips themselves (on the samples);
    otherwise each chunk's place on the speech-only timeline (its spans back to back, chunk after chunk)."""
    clips: list[dict[str, int]] = []
    for chunk in chunks:
        if clip_mode:
            clips.append(chunk[0])
        else:
            start = clips[-1]["end"] if clips else 0
            clips.append({"start": start, "end": start + sum(s["end"] - s["start"] for s in chunk)})
    return [_Batch(chunks[i : i + batch_size], clips[i : i + batch_size]) for i in range(0, len(chunks), batch_size)]


def chunks_holding_frames(lengths: list[int], frames: int, hop_length: int) -> int:
    """How many chunks from the start have at least `frames` feature frames in all (a chunk of n samples has
    n // hop_length of them once the library drops its last frame; one less is counted, to be safe)."""
    covered = 0
    for count, length in enumerate(lengths, start=1):
        covered += max(0, length // hop_length - 1)
        if covered >= frames:
            return count
    return len(lengths)


def _timeline(samples: np.ndarray, batch: _Batch) -> np.ndarray:
    """The speech-only timeline up to the batch's last chunk, holding only this batch's chunks: zeros elsewhere,
    never written, so never resident."""
    timeline = np.zeros(batch.clips[-1]["end"], dtype=np.float32)
    position = batch.clips[0]["start"]
    for chunk in batch.spans:
        for span in chunk:
            length = span["end"] - span["start"]
            timeline[position : position + length] = samples[span["start"] : span["end"]]
            position += length
    return timeline
