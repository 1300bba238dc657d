"""Audio I/O without torchaudio: FFmpeg (PyAV) decodes every input format, soxr resamples, libsndfile encodes.

Arrays are float32 shaped (channels, samples) everywhere in this package.

Input errors raise EngineError with one of these codes: `empty_file` (zero bytes), `undecodable_audio` (not audio
FFmpeg can read, or no audio stream), `empty_audio` (a valid container holding no samples).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import soundfile as sf
import soxr

from inference.base import EngineError

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
_SOUNDFILE_FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_24"), "mp3": ("MP3", "MPEG_LAYER_III")}
_MP3_MAX_RATE = 48000  # MPEG-1 layer III stops at 48 kHz; higher rates are resampled down for mp3 output
_DECODE_ERRORS = (av.FFmpegError, ValueError, IndexError, OSError)


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


def _open_audio(path: Path) -> tuple[av.container.InputContainer, av.AudioStream]:
    _check_not_empty(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except _DECODE_ERRORS as exc:
        raise _undecodable(exc) from exc
    if not container.streams.audio:
        container.close()
        raise EngineError("the file has no audio stream", code="undecodable_audio")
    stream = container.streams.audio[0]
    if not stream.codec_context.sample_rate or not stream.codec_context.channels:
        container.close()
        raise _undecodable()
    return container, stream


def probe(path: Path) -> AudioInfo:
    """Duration, rate and channels from the container headers; decodes the whole file only when they lack a length."""
    container, stream = _open_audio(path)
    with container:
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        try:
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = sum(frame.samples for frame in container.decode(stream)) / rate
        except _DECODE_ERRORS as exc:
            raise _undecodable(exc) from exc
        codec, container_name = stream.codec_context.name, container.format.name
    if duration <= 0:
        raise EngineError("the audio is empty", code="empty_audio")
    return AudioInfo(
        duration_s=duration, sample_rate=int(rate), channels=int(channels), codec=codec, container=container_name
    )


def iter_blocks(
    path: Path, sample_rate: int | None = None, mono: bool = False, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """Decode in blocks of about `block_seconds`, resampled to `sample_rate` (None keeps the file's rate).

    Memory stays bounded by one block: the resampler is streaming, so blocks join without seams and their
    concatenation equals a one-shot resample of the whole file.
    """
    container, stream = _open_audio(path)
    with container:
        source_rate = stream.codec_context.sample_rate
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
