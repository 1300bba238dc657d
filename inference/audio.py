"""Audio I/O without torchaudio: FFmpeg (PyAV) decodes every input format, soxr resamples, libsndfile encodes.

Arrays are float32 shaped (channels, samples) everywhere in this package.

Input errors raise EngineError with one of these codes: `empty_file` (zero bytes), `undecodable_audio` (not audio
FFmpeg can read, or no audio stream), `empty_audio` (a valid container holding no samples), and, against the
`DecodeLimits` in force, `audio_too_long`, `too_many_channels`, `sample_rate_too_high`.

Lengths are never taken from container headers (a FLAC STREAMINFO, an MP3 Xing tag or a WAV size field can claim
1 s for hours of audio): the probe adds up the packets the demuxer hands the decoder, and every decode helper counts
what it decodes, each stopping as soon as the running total passes the limit, so hostile input costs at most the
limit's worth of work. The worker sets the job's limits with `decode_limits` around the engine run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr

from inference.base import EngineError, OutputFile, emit_partial

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
_SOUNDFILE_FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_24"), "mp3": ("MP3", "MPEG_LAYER_III")}
_MP3_MAX_RATE = 48000  # MPEG-1 layer III stops at 48 kHz; higher rates are resampled down for mp3 output
_DECODE_ERRORS = (av.FFmpegError, ValueError, IndexError, OSError)
MAX_CHANNELS = 8  # engines build per-channel state (enhance: one model per channel); 7.1 is the widest we accept
MAX_SAMPLE_RATE = 192_000
# Demuxed packet durations round up to whole codec frames (mp3 priming, AAC padding): what a job may decode beyond
# the seconds it was priced on before the worker calls it a lie.
PRICED_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class DecodeLimits:
    """What one input may hold. None for `max_seconds` means no duration limit."""

    max_seconds: float | None = None
    max_channels: int = MAX_CHANNELS
    max_sample_rate: int = MAX_SAMPLE_RATE
    priced_seconds: float | None = None  # set when the job's price, not the deployment's cap, bounds max_seconds

    @classmethod
    def for_job(
        cls, max_seconds: float, priced_seconds: float | None, max_channels: int, max_sample_rate: int
    ) -> DecodeLimits:
        """The worker's limits for a job: the deployment's cap, and no more than the duration it was priced on
        (plus slack), so a container whose packet timing lies fails the job instead of running underpriced."""
        if priced_seconds is not None and float(priced_seconds) + PRICED_SLACK_SECONDS < max_seconds:
            priced = float(priced_seconds)
            return cls(priced + PRICED_SLACK_SECONDS, max_channels, max_sample_rate, priced_seconds=priced)
        return cls(max_seconds=max_seconds, max_channels=max_channels, max_sample_rate=max_sample_rate)


# Engines call probe/iter_blocks/decode without limits; the worker sets the job's here (asyncio.to_thread copies
# the context into the engine's thread).
DEFAULT_LIMITS = DecodeLimits()  # frozen: safe to share as the ContextVar default
_LIMITS: ContextVar[DecodeLimits] = ContextVar("decode_limits", default=DEFAULT_LIMITS)


@contextmanager
def decode_limits(limits: DecodeLimits) -> Iterator[None]:
    """Apply `limits` to every probe and decode in this context (and threads started from it with to_thread)."""
    token = _LIMITS.set(limits)
    try:
        yield
    finally:
        _LIMITS.reset(token)


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    codec: str
    container: str


def _undecodable(exc: BaseException | None = None) -> EngineError:
    error = EngineError("the file is not decodable audio", code="undecodable_audio")
    if exc is not None:
        error.__cause__ = exc
    return error


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _undecodable(exc) from exc
    if size == 0:
        raise EngineError("the file is empty", code="empty_file")


# FFmpeg's default stream probe reads up to 5 MB of packets and decodes them to fill in parameters that every accepted
# container states in its header (a short upload is read and decoded whole: ~10 ms of a ~1 ms probe), and then the
# probe demuxes the same packets again. A 4 KiB probe finds the same rate, channels, codec and container for wav,
# flac, mp3 (ID3 tags are skipped, however large), ogg and m4a; a stream it leaves incomplete gets the full probe.
_SHORT_PROBE = {"probesize": "4096"}


def _open_audio(path: Path) -> tuple[av.container.InputContainer, av.AudioStream]:
    _check_not_empty(path)
    container, stream = _open_stream(path, _SHORT_PROBE)
    if not stream.codec_context.sample_rate or not stream.codec_context.channels:
        container.close()
        container, stream = _open_stream(path, {})
        if not stream.codec_context.sample_rate or not stream.codec_context.channels:
            container.close()
            raise _undecodable()
    return container, stream


def _open_stream(path: Path, options: dict[str, str]) -> tuple[av.container.InputContainer, av.AudioStream]:
    try:
        container = av.open(str(path), metadata_errors="ignore", container_options=options)
    except _DECODE_ERRORS as exc:
        raise _undecodable(exc) from exc
    if not container.streams.audio:
        container.close()
        raise EngineError("the file has no audio stream", code="undecodable_audio")
    return container, container.streams.audio[0]


def _too_long(limits: DecodeLimits) -> EngineError:
    if limits.priced_seconds is not None:
        message = f"the audio decodes to more than the {limits.priced_seconds:.1f} s it was measured and priced at"
    else:
        message = f"the audio is longer than the {limits.max_seconds:g} s limit"
    return EngineError(message, code="audio_too_long")


def _check_shape(rate: int, channels: int, limits: DecodeLimits) -> None:
    if channels > limits.max_channels:
        raise EngineError(
            f"the audio has {channels} channels; at most {limits.max_channels} are accepted", code="too_many_channels"
        )
    if rate > limits.max_sample_rate:
        raise EngineError(
            f"the audio is sampled at {rate} Hz; at most {limits.max_sample_rate} Hz is accepted",
            code="sample_rate_too_high",
        )


def probe(path: Path, limits: DecodeLimits | None = None) -> AudioInfo:
    """Duration, rate and channels of what the decoder will produce, within `limits` (default: the context's).

    The duration is the sum of the demuxed packets' durations (no decoding: ~0.2-0.5 s for 20 min of any format
    here, against 1-2.5 s to decode it); a stream with a packet of unknown duration is counted by decoding instead.
    Either way reading stops as soon as the total passes `limits.max_seconds`.
    """
    limits = limits or _LIMITS.get()
    container, stream = _open_audio(path)
    with container:
        rate = int(stream.codec_context.sample_rate)
        channels = int(stream.codec_context.channels)
        _check_shape(rate, channels, limits)
        codec, container_name = stream.codec_context.name, container.format.name
        try:
            duration = _demuxed_seconds(container, stream, limits)
        except _DECODE_ERRORS as exc:
            raise _undecodable(exc) from exc
    if duration is None:
        duration = _decoded_seconds(path, limits)
    if duration <= 0:
        raise EngineError("the audio is empty", code="empty_audio")
    return AudioInfo(duration_s=duration, sample_rate=rate, channels=channels, codec=codec, container=container_name)


def _demuxed_seconds(
    container: av.container.InputContainer, stream: av.AudioStream, limits: DecodeLimits
) -> float | None:
    """Seconds of audio in the stream's packets, or None when a packet does not say how long it is."""
    time_base = stream.time_base
    if time_base is None or time_base <= 0:
        return None
    # Integer ticks of the stream's time base: exact however many packets there are.
    limit_ticks = None if limits.max_seconds is None else limits.max_seconds / time_base
    ticks = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.duration is None or packet.duration <= 0:
            return None
        ticks += packet.duration
        if limit_ticks is not None and ticks > limit_ticks:
            raise _too_long(limits)
    return float(ticks * time_base)


def _decoded_seconds(path: Path, limits: DecodeLimits) -> float:
    container, stream = _open_audio(path)
    seconds = 0.0
    with container:
        try:
            for frame in container.decode(stream):
                seconds += frame.samples / (frame.sample_rate or stream.codec_context.sample_rate)
                if limits.max_seconds is not None and seconds > limits.max_seconds:
                    raise _too_long(limits)
        except _DECODE_ERRORS as exc:
            raise _undecodable(exc) from exc
    return seconds


def iter_blocks(
    path: Path, sample_rate: int | None = None, mono: bool = False, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """Decode in blocks of about `block_seconds`, resampled to `sample_rate` (None keeps the file's rate).

    Memory stays bounded by one block: the resampler is streaming, so blocks join without seams and their
    concatenation equals a one-shot resample of the whole file. The context's `DecodeLimits` apply: past
    `max_seconds` of decoded audio it raises `audio_too_long` (the blocks already yielded stay within the limit).
    """
    limits = _LIMITS.get()
    container, stream = _open_audio(path)
    with container:
        source_rate = stream.codec_context.sample_rate
        _check_shape(source_rate, stream.codec_context.channels, limits)
        # Counted in source samples, what the decoder hands over, before any resampling.
        max_samples = None if limits.max_seconds is None else limits.max_seconds * source_rate
        decoded = 0
        channels = 1 if mono else stream.codec_context.channels
        target_rate = sample_rate or source_rate
        resampler = (
            soxr.ResampleStream(source_rate, target_rate, channels, dtype="float32", quality="HQ")
            if target_rate != source_rate
            else None
        )
        block = max(1, int(block_seconds * source_rate))  # counted in source samples, before resampling
        pending: list[np.ndarray] = []
        pending_samples = 0
        produced = 0

        def flush(last: bool) -> np.ndarray:
            data = np.concatenate(pending, axis=1) if pending else np.zeros((channels, 0), np.float32)
            if resampler is not None:
                data = resampler.resample_chunk(np.ascontiguousarray(data.T), last=last).T
            return np.ascontiguousarray(data, dtype=np.float32)

        try:
            for frame in container.decode(stream):
                samples = _frame_to_float(frame)
                if samples.shape[0] != stream.codec_context.channels:
                    raise _undecodable()  # a mid-stream layout change; our block shapes cannot follow it
                decoded += samples.shape[1]
                if max_samples is not None and decoded > max_samples:
                    raise _too_long(limits)
                pending.append(samples.mean(axis=0, keepdims=True) if mono else samples)
                pending_samples += samples.shape[1]
                if pending_samples >= block:
                    out = flush(last=False)
                    pending, pending_samples = [], 0
                    if out.shape[1]:
                        produced += out.shape[1]
                        yield out
            out = flush(last=True)
        except _DECODE_ERRORS as exc:
            raise _undecodable(exc) from exc
        if out.shape[1]:
            produced += out.shape[1]
            yield out
    if produced == 0:
        raise EngineError("the audio is empty", code="empty_audio")


def decode(path: Path, sample_rate: int | None = None, mono: bool = False) -> np.ndarray:
    """The whole file as float32 (channels, samples) at `sample_rate` (None keeps the file's rate)."""
    blocks = list(iter_blocks(path, sample_rate=sample_rate, mono=mono, block_seconds=60.0))
    audio = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return audio
    return np.ascontiguousarray(soxr.resample(audio.T, source_rate, target_rate, quality="VHQ").T, dtype=np.float32)


def encode(path: Path, audio: np.ndarray, sample_rate: int, fmt: str) -> Path:
    """Write (channels, samples) float audio as wav/flac (24-bit) or mp3; clips to [-1, 1] first."""
    with AudioWriter(path, sample_rate, audio.shape[0], fmt) as writer:
        writer.write(audio)
    return path


class AudioWriter:
    """Streaming encoder: append (channels, samples) blocks so long outputs never sit in memory whole.

    mp3 output above 48 kHz is resampled to 48 kHz on the fly (`output_rate` tells the rate written).
    """

    def __init__(self, path: Path, sample_rate: int, channels: int, fmt: str) -> None:
        if fmt not in _SOUNDFILE_FORMATS:
            raise ValueError(f"unsupported output format {fmt!r}")
        container, subtype = _SOUNDFILE_FORMATS[fmt]
        self.path = path
        self.channels = channels
        self.output_rate = min(sample_rate, _MP3_MAX_RATE) if fmt == "mp3" else sample_rate
        self._resampler = (
            soxr.ResampleStream(sample_rate, self.output_rate, channels, dtype="float32", quality="HQ")
            if self.output_rate != sample_rate
            else None
        )
        self.frames_written = 0
        self._file = sf.SoundFile(
            str(path), "w", samplerate=self.output_rate, channels=channels, format=container, subtype=subtype
        )

    def write(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, samples) block, got {block.shape}")
        data = np.clip(np.asarray(block, dtype=np.float32), -1.0, 1.0).T
        if self._resampler is not None:
            data = self._resampler.resample_chunk(np.ascontiguousarray(data))
        self._write(data)

    def close(self) -> None:
        if self._file.closed:
            return
        if self._resampler is not None:
            self._write(self._resampler.resample_chunk(np.zeros((0, self.channels), np.float32), last=True))
        self._file.close()

    def _write(self, data: np.ndarray) -> None:
        if len(data):
            self._file.write(data)
            self.frames_written += len(data)

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    if array.dtype.kind == "i":
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
    elif array.dtype.kind == "u":  # 8-bit PCM is unsigned, centred on 128
        array = (array.astype(np.float32) - 128.0) / 128.0
    return array.astype(np.float32, copy=False)


def finished_stems(paths: dict[str, Path], format: str, metadata: dict[str, Any]) -> list[OutputFile]:
    """One output per stem file whose writer has closed, each announced as a partial output at once (complete, so
    downloadable before the job ends). `format` is the files' audio format."""
    outputs = [
        OutputFile(path.name, path, CONTENT_TYPES[format], {"stem": stem, **metadata}) for stem, path in paths.items()
    ]
    for output in outputs:
        emit_partial(output)
    return outputs
