"""Inputs that lie about their length, built with real encoders and then patched the way an attacker would.

Each writer returns the path; the audio really holds `seconds` of a tone (or silence), whatever the header says.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf

RATE = 8000  # small files: the tricks do not depend on the rate
LARGEST_FLAC_FRAME_S = 65535 / RATE  # the most one FLAC packet can add past a limit


def tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """(samples, channels) float32."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def flac_claiming(path: Path, seconds: float, claimed_samples: int) -> Path:
    """A FLAC whose STREAMINFO total-samples field says `claimed_samples` (0 = unknown, "header-less")."""
    sf.write(str(path), tone(seconds), RATE, format="FLAC", subtype="PCM_16")
    return _patch_flac_total(path, claimed_samples)


def silent_flac(path: Path, seconds: float, rate: int = RATE, block_seconds: float = 600.0) -> Path:
    """A header-less FLAC of digital silence: a tiny file that decodes to `seconds` (hours compress to kilobytes)."""
    block = np.zeros((int(block_seconds * rate), 1), np.float32)
    remaining = int(seconds * rate)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as out:
        while remaining > 0:
            out.write(block[: min(remaining, len(block))])
            remaining -= len(block)
    return _patch_flac_total(path, 0)


def _patch_flac_total(path: Path, claimed_samples: int) -> Path:
    data = bytearray(path.read_bytes())
    # "fLaC", a 4-byte block header, then STREAMINFO: 10 bytes of block/frame sizes, then 64 bits holding
    # rate (20) | channels-1 (3) | bits-1 (5) | total samples (36).
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must come first"
    packed = struct.unpack(">Q", data[18:26])[0]
    mask = (1 << 36) - 1
    data[18:26] = struct.pack(">Q", (packed & ~mask) | (claimed_samples & mask))
    path.write_bytes(bytes(data))
    return path


def mp3_claiming(path: Path, seconds: float, claimed_frames: int) -> Path:
    """An MP3 (libmp3lame through PyAV, which writes a Xing/Info tag) whose tag's frame count is `claimed_frames`."""
    signal = np.ascontiguousarray(tone(seconds).T)
    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=RATE, layout="mono")
        frame_size = stream.codec_context.frame_size or 1152
        for start in range(0, signal.shape[1], frame_size):
            chunk = np.ascontiguousarray(signal[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytearray(path.read_bytes())
    tag = max(data.find(b"Xing", 0, 200), data.find(b"Info", 0, 200))
    assert tag > 0, "the muxer wrote no Xing/Info tag"
    flags = struct.unpack(">I", data[tag + 4 : tag + 8])[0]
    assert flags & 1, "the tag carries no frame count"
    data[tag + 8 : tag + 12] = struct.pack(">I", claimed_frames)
    path.write_bytes(bytes(data))
    return path


def wav_with_data_chunks(path: Path, chunk_seconds: list[float]) -> Path:
    """A PCM WAV with one `data` chunk per entry (the RIFF size covers them all)."""
    sf.write(str(path), tone(chunk_seconds[0]), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    for seconds in chunk_seconds[1:]:
        pcm = (tone(seconds)[:, 0] * 32767).astype("<i2").tobytes()
        data += b"data" + struct.pack("<I", len(pcm)) + pcm
    data[4:8] = struct.pack("<I", len(data) - 8)
    path.write_bytes(bytes(data))
    return path


def wav_with_data_size(path: Path, seconds: float, claimed_bytes: int) -> Path:
    """A PCM WAV holding `seconds` whose data-chunk size field says `claimed_bytes`."""
    sf.write(str(path), tone(seconds), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    chunk = data.find(b"data")
    data[chunk + 4 : chunk + 8] = struct.pack("<I", claimed_bytes)
    path.write_bytes(bytes(data))
    return path


class CountingContainer:
    """Wraps PyAV's container to count the audio that flows out of it (packets demuxed, frames decoded)."""

    def __init__(self, inner: av.container.InputContainer) -> None:
        self._inner = inner
        self.seconds_demuxed = 0.0
        self.seconds_decoded = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> CountingContainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._inner.close()

    def demux(self, *args: Any, **kwargs: Any) -> Iterator[av.Packet]:
        for packet in self._inner.demux(*args, **kwargs):
            if packet.duration and packet.time_base:
                self.seconds_demuxed += float(packet.duration * packet.time_base)
            yield packet

    def decode(self, *args: Any, **kwargs: Any) -> Iterator[av.AudioFrame]:
        for frame in self._inner.decode(*args, **kwargs):
            self.seconds_decoded += frame.samples / frame.sample_rate
            yield frame


@contextmanager
def count_audio_read() -> Iterator[list[CountingContainer]]:
    """Every container av.open returns inside the block is wrapped to count the audio read out of it."""
    real_open = av.open
    opened: list[CountingContainer] = []

    def counting_open(*args: Any, **kwargs: Any) -> CountingContainer:
        container = CountingContainer(real_open(*args, **kwargs))
        opened.append(container)
        return container

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(av, "open", counting_open)
        yield opened
    assert opened, "nothing was opened through av.open"


def seconds_read(opened: list[CountingContainer]) -> float:
    return sum(container.seconds_demuxed + container.seconds_decoded for container in opened)
