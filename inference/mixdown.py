"""mixdown: a session's tracks summed to one stereo file, exactly as the studio's timeline plays them.

Each track's output is decoded (resampled to the mix's rate), trimmed to [trim_in, trim_out), scaled by its gain,
panned and added at its offset. Positions round to whole frames at the mix's rate. The pan law is the Web Audio
API's StereoPannerNode equal-power algorithm (https://webaudio.github.io/web-audio-api/#stereopanner-algorithm),
which the studio plays through, so the file is what the user heard:

- a mono track: x = (pan + 1) / 2; L = in * cos(x * pi / 2), R = in * sin(x * pi / 2) (centre: -3 dB each side);
- a stereo track: x = pan + 1 for pan <= 0, else pan; gL = cos(x * pi / 2), gR = sin(x * pi / 2); pan <= 0 gives
  L = inL + inR * gL, R = inR * gR; pan > 0 gives L = inL * gL, R = inR + inL * gR (centre: unchanged).

Tracks of more than two channels are averaged to mono first. Everything streams: each track is read once, in
order, through `inference.audio.iter_blocks`, and the mix is written block by block, so memory stays bounded by a
block per track however long the session. The mix is clipped to [-1, 1] only where the writer must (24-bit wav or
flac, mp3), like any other output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn
from inference.params import MixdownParams, MixdownTrack

BLOCK_FRAMES = 1 << 16  # about 1.4 s at 48 kHz per mix block


def track_input_name(index: int) -> str:
    """The name the worker gives the `index`-th track's file in `extra_inputs`."""
    return f"track{index}"


def pan_gains(pan: float, channels: int) -> tuple[float, float]:
    """(gL, gR) of the StereoPannerNode algorithm for a mono (1) or stereo (2) input."""
    x = (pan + 1.0) / 2.0 if channels == 1 else (pan + 1.0 if pan <= 0 else pan)
    return math.cos(x * math.pi / 2.0), math.sin(x * math.pi / 2.0)


def pan_block(block: np.ndarray, pan: float) -> np.ndarray:
    """A (1 or 2, n) block panned to (2, n)."""
    left_gain, right_gain = pan_gains(pan, block.shape[0])
    if block.shape[0] == 1:
        return np.concatenate([block * left_gain, block * right_gain])
    left, right = block[0], block[1]
    if pan <= 0:
        return np.stack([left + right * left_gain, right * right_gain])
    return np.stack([left * left_gain, right + left * right_gain])


class _TrackReader:
    """One track's samples in order: `read(n)` gives the next n frames of [trim_in, trim_out), zero-padded where the
    file ends early (a file shorter than the length it was priced on plays silence, never more)."""

    def __init__(self, path: Path, track: MixdownTrack, rate: int) -> None:
        self.offset, self._skip, self.length = track.frames(rate)
        self.gain = 10.0 ** (track.gain_db / 20.0)
        self.pan = track.pan
        self._blocks: Iterator[np.ndarray] | None = audio.iter_blocks(path, sample_rate=rate, block_seconds=10.0)
        self._pending = np.zeros((0, 0), np.float32)

    def _next_block(self) -> np.ndarray | None:
        if self._blocks is None:
            return None
        try:
            block = next(self._blocks)
        except StopIteration:
            self._blocks = None
            return None
        return block if block.shape[0] <= 2 else block.mean(axis=0, keepdims=True)

    def _take(self, frames: int) -> np.ndarray | None:
        """The next `frames` decoded frames (fewer at the end of the file; None once it has ended)."""
        parts, have = [], 0
        if self._pending.shape[1]:
            parts.append(self._pending)
            have = self._pending.shape[1]
        while have < frames:
            block = self._next_block()
            if block is None:
                break
            parts.append(block)
            have += block.shape[1]
        if not parts:
            return None
        joined = np.concatenate(parts, axis=1)
        self._pending = joined[:, frames:]
        return joined[:, :frames]

    def read(self, frames: int) -> np.ndarray:
        while self._skip:
            skipped = self._take(min(self._skip, BLOCK_FRAMES))
            self._skip = 0 if skipped is None else self._skip - skipped.shape[1]
        data = self._take(frames)
        if data is None:
            data = np.zeros((1, 0), np.float32)
        if data.shape[1] < frames:
            data = np.pad(data, ((0, 0), (0, frames - data.shape[1])))
        return data

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()  # type: ignore[attr-defined]  # a generator: closing releases the container
            self._blocks = None


class MixdownEngine:
    model_key = "dsp/mixdown"

    def run(
        self,
        input_path: Path | None,
        params: BaseModel,
        out_dir: Path,
        progress: ProgressFn,
        extra_inputs: Mapping[str, Path] | None = None,
    ) -> EngineResult:
        if not isinstance(params, MixdownParams):
            raise TypeError(f"the mixdown engine cannot run {type(params).__name__}")
        paths = extra_inputs or {}
        missing = [i for i in range(len(params.tracks)) if track_input_name(i) not in paths]
        if missing:
            raise EngineError(f"the audio of track {missing[0] + 1} is missing", code="missing_input")
        out_dir.mkdir(parents=True, exist_ok=True)
        rate = params.sample_rate
        total = params.output_frames()
        readers = [_TrackReader(paths[track_input_name(i)], t, rate) for i, t in enumerate(params.tracks)]
        out_path = out_dir / f"mixdown.{params.format}"
        try:
            with audio.AudioWriter(out_path, rate, 2, params.format) as writer:
                for start in range(0, total, BLOCK_FRAMES):
                    frames = min(BLOCK_FRAMES, total - start)
                    writer.write(self._mix_block(readers, start, frames))
                    progress(min(0.99, (start + frames) / total), "mixing")
        finally:
            for reader in readers:
                reader.close()
        metadata: dict[str, Any] = {"sample_rate": writer.output_rate, "channels": 2, "tracks": len(params.tracks)}
        output = OutputFile(out_path.name, out_path, audio.CONTENT_TYPES[params.format], metadata)
        return EngineResult([output], {"audio_seconds": total / rate, "output_seconds": total / rate})

    @staticmethod
    def _mix_block(readers: list[_TrackReader], start: int, frames: int) -> np.ndarray:
        mix = np.zeros((2, frames), np.float64)
        for reader in readers:
            low, high = max(start, reader.offset), min(start + frames, reader.offset + reader.length)
            if low >= high:
                if start >= reader.offset + reader.length:
                    reader.close()  # done with this track: release its decoder early
                continue
            mix[:, low - start : high - start] += pan_block(reader.read(high - low) * reader.gain, reader.pan)
        return mix


def build_engine(model_key: str, weights_dir: Path, **options: Any) -> MixdownEngine:
    """Same signature as the other factories; a mixdown needs no files."""
    return MixdownEngine()
