"""Audio I/O without torchaudio: FFmpeg (PyAV) decodes every input format, soxr resamples, libsndfile encodes.

Arrays are float32 shaped (channels, samples) everywhere in this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from inference.base import EngineError

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
_SOUNDFILE_FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_24"), "mp3": ("MP3", "MPEG_LAYER_III")}


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    codec: str
    container: str


def probe(path: Path) -> AudioInfo:
    """Duration, rate and channels from the container headers; decodes the whole file only when they lack a length."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise EngineError("the file has no audio stream", code="undecodable_audio")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            channels = stream.codec_context.channels
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = sum(frame.samples for frame in container.decode(stream)) / rate
            codec, container_name = stream.codec_context.name, container.format.name
    except EngineError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise EngineError("the file is not decodable audio", code="undecodable_audio") from exc
    if not rate or not channels:
        raise EngineError("the file is not decodable audio", code="undecodable_audio")
    if duration <= 0:
        raise EngineError("the audio is empty", code="empty_audio")
    return AudioInfo(duration_s=duration, sample_rate=int(rate), channels=int(channels), codec=codec,
                     container=container_name)


def iter_blocks(path: Path, sample_rate: int | None = None, mono: bool = False,
                block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """Decode in blocks of about `block_seconds`, resampled to `sample_rate` (None keeps the file's rate).

    Memory stays bounded by one block: the resampler is streaming, so blocks join without seams.
    """
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise EngineError("the file has no audio stream", code="undecodable_audio")
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate
            target_rate = sample_rate or source_rate
            resampler = soxr.ResampleStream(source_rate, target_rate, 1 if mono else stream.codec_context.channels,
                                            dtype="float32", quality="HQ") if target_rate != source_rate else None
            pending: list[np.ndarray] = []
            pending_samples = 0
            block = int(block_seconds * target_rate)
            for frame in container.decode(stream):
                samples = _frame_to_float(frame)
                if mono:
                    samples = samples.mean(axis=0, keepdims=True)
                if resampler is not None:
                    samples = resampler.resample_chunk(np.ascontiguousarray(samples.T)).T
                pending.append(samples)
                pending_samples += samples.shape[1]
                if pending_samples >= block:
                    yield np.concatenate(pending, axis=1)
                    pending, pending_samples = [], 0
            if resampler is not None:
                pending.append(resampler.resample_chunk(np.zeros((0, pending[0].shape[0] if pending else 1),
                                                                 np.float32), last=True).T)
            if pending and sum(p.shape[1] for p in pending):
                yield np.concatenate(pending, axis=1)
    except EngineError:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise EngineError("the file is not decodable audio", code="undecodable_audio") from exc


def decode(path: Path, sample_rate: int | None = None, mono: bool = False) -> np.ndarray:
    """The whole file as float32 (channels, samples) at `sample_rate` (None keeps the file's rate)."""
    blocks = list(iter_blocks(path, sample_rate=sample_rate, mono=mono, block_seconds=60.0))
    if not blocks:
        raise EngineError("the audio is empty", code="empty_audio")
    audio = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
    if audio.shape[1] == 0:
        raise EngineError("the audio is empty", code="empty_audio")
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return audio
    return np.ascontiguousarray(soxr.resample(audio.T, source_rate, target_rate, quality="VHQ").T, dtype=np.float32)


def encode(path: Path, audio: np.ndarray, sample_rate: int, fmt: str) -> Path:
    """Write (channels, samples) float audio as wav/flac (24-bit) or mp3; clips to [-1, 1] first."""
    container, subtype = _SOUNDFILE_FORMATS[fmt]
    data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).T
    sf.write(str(path), data, sample_rate, format=container, subtype=subtype)
    return path


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
