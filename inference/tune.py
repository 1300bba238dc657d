"""Pitch correction of a monophonic voice or instrument: WORLD (pyworld) analysis and resynthesis.

- f0 tracker: WORLD's Harvest (pyworld.harvest). Why Harvest and not pYIN: the resynthesis is WORLD, whose
  spectral-envelope (CheapTrick) and aperiodicity (D4C) analyses are defined on the f0 they are given and are
  designed around Harvest's f0 (pitch-synchronous windows); one tracker for analysis, resynthesis and the before /
  after measurement keeps the figures comparable. Harvest is also ~3x faster than librosa's pYIN at the same 5 ms
  hop and needs no numba warm-up. Range 65-1050 Hz (C2-C6), hop = round(5 ms) in samples.
- Resynthesis: WORLD vocoder with the spectral envelope kept (formants stay where they were) and the frame timing
  unchanged (same hop, same frame count: duration identical to the sample), only f0 replaced.
- Correction: each voiced frame's target is the nearest note of the scale (with hysteresis, see `note_targets`);
  the correction (target - sung, cents) is scaled by `strength` (1 = hard tune: the output sits on the note, vibrato
  and drift removed) and, from the start of each note, faded in as 1 - exp(-t / retune_ms): a new note is pulled to
  pitch with that time constant (0 = at once), so scoops into a note survive a slow setting.
- `key=auto`: the tonic whose scale is closest (least total |cents| to its nearest note) to the voiced frames.
- Unvoiced frames pass through untouched: only windows around voiced runs are resynthesized, and each window is
  cross-faded into the original over a 30 ms unvoiced margin at each side. A window whose correction is zero
  everywhere (e.g. `strength=0`) is copied, not resynthesized, so `strength=0` returns the input exactly.
- Bounded memory: the input is decoded once into a temporary float file; the f0 track (a few floats per 5 ms) is
  the only thing that grows with length; Harvest runs on 20 s chunks with 0.5 s context, and resynthesis on windows
  of at most 20 s (a voiced run longer than that is split, consecutive windows cross-faded over 20 ms).
- pitch.json: frame times, f0 before (tracked on the input), the f0 target given to WORLD, f0 after (tracked again
  on the written output), voiced flags, and the median absolute deviation from the nearest allowed note, in cents,
  before and after (voiced frames only).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pydantic import BaseModel

from inference import audio
from inference.base import EngineResult, OutputFile, ProgressFn
from inference.params import NOTE_NAMES, SCALES, TuneParams

with warnings.catch_warnings():  # pyworld 0.3.5 imports pkg_resources for its version only
    warnings.simplefilter("ignore", UserWarning)
    import pyworld

F0_FLOOR_HZ = 65.0
F0_CEIL_HZ = 1050.0
HOP_S = 0.005
CHUNK_S = 20.0  # Harvest chunk
CONTEXT_S = 0.5  # Harvest context each side of a chunk
MARGIN_S = 0.03  # unvoiced margin resynthesized and cross-faded at each side of a voiced run
MAX_WINDOW_S = 20.0
SPLIT_CROSSFADE_S = 0.02
ANALYSIS_PAD_S = 0.05  # extra input each side of a window for WORLD's analysis windows
BLOCK_SECONDS = 10.0
NOTE_HYSTERESIS_CENTS = 30.0
SILENCE_BELOW_PEAK_DB = 50.0  # frames this far under the loudest frame are unvoiced, whatever Harvest says


def hop_samples(rate: int) -> int:
    return max(1, round(HOP_S * rate))


def track_f0(x: np.ndarray, rate: int) -> np.ndarray:
    """Harvest f0 (Hz, 0 = unvoiced) of a mono float64 signal, one value per hop starting at sample 0."""
    hop = hop_samples(rate)
    f0, _ = pyworld.harvest(x, rate, f0_floor=F0_FLOOR_HZ, f0_ceil=F0_CEIL_HZ, frame_period=hop * 1000.0 / rate)
    return f0


def frame_count(samples: int, rate: int) -> int:
    return samples // hop_samples(rate) + 1


def track_f0_file(sound: sf.SoundFile, rate: int) -> np.ndarray:
    """Harvest over a whole (seekable) file in CHUNK_S chunks with CONTEXT_S context, on the channel mean.

    Harvest calls almost everything voiced (it found pitch in near-silence on the shared vocal), so frames more
    than SILENCE_BELOW_PEAK_DB under the file's loudest frame are set unvoiced.
    """
    hop = hop_samples(rate)
    total = sound.frames
    frames = frame_count(total, rate)
    f0 = np.zeros(frames)
    level_db = np.full(frames, -np.inf)
    chunk = max(1, round(CHUNK_S / HOP_S))  # in frames
    context = round(CONTEXT_S / HOP_S)
    for first in range(0, frames, chunk):
        start = max(0, first - context) * hop
        stop = min(total, (first + chunk + context) * hop)
        sound.seek(start)
        x = sound.read(stop - start, dtype="float64", always_2d=True).mean(axis=1)
        part = track_f0(x, rate)
        offset = first - start // hop
        count = min(chunk, frames - first)
        keep = part[offset : offset + count]
        f0[first : first + len(keep)] = keep
        level_db[first : first + count] = _frame_levels_db(x, hop, offset, count)
    f0[level_db < level_db.max() - SILENCE_BELOW_PEAK_DB] = 0.0
    return f0


def _frame_levels_db(x: np.ndarray, hop: int, first: int, count: int) -> np.ndarray:
    """RMS level (dB) of `count` hop-long frames centred on frames first.. of x (frame i centred at i * hop)."""
    padded = np.pad(x, (hop // 2, hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, hop)[::hop][first : first + count]
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    return np.pad(levels, (0, count - len(levels)), constant_values=-np.inf)


def allowed_classes(key: str, scale: str, midi: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Allowed pitch classes (0 = C) and the key used; `auto` fits the tonic to the sung frames."""
    steps = np.asarray(SCALES[scale])
    if scale == "chromatic":
        return steps, None
    if key != "auto":
        tonic = NOTE_NAMES.index(key)
        return (steps + tonic) % 12, key
    costs = [np.abs(cents_off(midi, (steps + tonic) % 12)).sum() for tonic in range(12)]
    tonic = int(np.argmin(costs))
    return (steps + tonic) % 12, NOTE_NAMES[tonic]


def cents_off(midi: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Signed cents from each (fractional) MIDI pitch to the nearest allowed pitch class (positive = sharp)."""
    diff = (midi[:, None] - classes[None, :]) % 12.0
    diff = np.where(diff > 6.0, diff - 12.0, diff)  # in (-6, 6] semitones
    nearest = np.argmin(np.abs(diff), axis=1)
    return 100.0 * diff[np.arange(len(midi)), nearest]


def to_midi(f0: np.ndarray) -> np.ndarray:
    return 69.0 + 12.0 * np.log2(f0 / 440.0)


def note_targets(midi: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The note (fractional MIDI -> whole MIDI note of the scale) each frame of one voiced run is pulled to.

    The nearest allowed note, with hysteresis: the run keeps its current note until another allowed note is
    NOTE_HYSTERESIS_CENTS closer, so a pitch wavering near the half-way point (vibrato, scoops) does not flip
    between two notes every frame (which the resynthesis would turn into a warble).
    """
    nearest = midi - cents_off(midi, classes) / 100.0
    targets = np.empty_like(midi)
    current = nearest[0]
    for i, (sung, candidate) in enumerate(zip(midi, nearest, strict=True)):
        if candidate != current and abs(sung - current) * 100.0 > abs(sung - candidate) * 100.0 + NOTE_HYSTERESIS_CENTS:
            current = candidate
        targets[i] = current
    return targets


def corrected_f0(f0: np.ndarray, classes: np.ndarray, strength: float, retune_ms: float) -> np.ndarray:
    """The f0 WORLD is given: each voiced run pulled towards the scale (see the module doc)."""
    out = f0.copy()
    voiced = f0 > 0
    if not voiced.any() or strength == 0.0:
        return out
    for start, stop in voiced_runs(voiced):
        midi = to_midi(f0[start:stop])
        targets = note_targets(midi, classes)
        # Frames since the current note began (a voiced run starts one; so does every change of target note).
        onsets = np.flatnonzero(np.concatenate([[True], targets[1:] != targets[:-1]]))
        since = np.arange(len(midi)) - np.repeat(onsets, np.diff(np.append(onsets, len(midi))))
        pull = 1.0 - np.exp(-(since + 1) * HOP_S * 1000.0 / retune_ms) if retune_ms > 0 else np.ones(len(midi))
        correction = 100.0 * (targets - midi) * pull  # cents
        out[start:stop] = f0[start:stop] * 2.0 ** (strength * correction / 1200.0)
    return out


def voiced_runs(voiced: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


@dataclass(frozen=True)
class Window:
    start: int  # samples
    stop: int
    ramp_in: int  # samples cross-faded from what precedes (the original, or the previous window's synthesis)
    ramp_out: int  # samples cross-faded back to the original at the end (0 when the next window continues it)


def plan_windows(voiced: np.ndarray, rate: int, total: int) -> list[Window]:
    """Resynthesis windows: voiced runs plus unvoiced margins, merged when they touch, split when too long."""
    hop = hop_samples(rate)
    margin = round(MARGIN_S * rate)
    spans: list[list[int]] = []
    for first, last in voiced_runs(voiced):
        start, stop = max(0, first * hop - margin), min(total, last * hop + margin)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = stop
        else:
            spans.append([start, stop])
    windows = []
    longest, overlap = round(MAX_WINDOW_S * rate), round(SPLIT_CROSSFADE_S * rate)
    for start, stop in spans:
        edge_in = margin if start > 0 else 0
        edge_out = margin if stop < total else 0
        piece = start
        while True:
            end = min(stop, piece + longest)
            windows.append(Window(piece, end, edge_in if piece == start else overlap, edge_out if end == stop else 0))
            if end == stop:
                break
            piece = end - overlap
    return windows


def resynthesize(x: np.ndarray, f0: np.ndarray, f0_new: np.ndarray, rate: int) -> np.ndarray:
    """WORLD: envelope and aperiodicity analysed on `f0`, synthesized on `f0_new`, same frames, len(x) samples."""
    period = hop_samples(rate) * 1000.0 / rate
    times = np.arange(len(f0)) * period / 1000.0
    envelope = pyworld.cheaptrick(x, f0, times, rate)
    aperiodicity = pyworld.d4c(x, f0, times, rate)
    y = pyworld.synthesize(f0_new, envelope, aperiodicity, rate, period)
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]


class TuneEngine:
    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        assert isinstance(params, TuneParams) and input_path is not None
        out_path = out_dir / f"tuned.{params.format}"
        progress(0.0, "decoding")
        with tempfile.TemporaryDirectory(prefix="tune-", dir=out_dir) as scratch:
            decoded_path = Path(scratch) / "decoded.wav"
            rate, channels = _decode_to(input_path, decoded_path)
            with sf.SoundFile(str(decoded_path)) as decoded:
                total = decoded.frames
                progress(0.1, "tracking pitch")
                f0 = track_f0_file(decoded, rate)
                voiced = f0 > 0
                midi_before = to_midi(f0[voiced])
                classes, key_used = allowed_classes(params.key, params.scale, midi_before)
                target = corrected_f0(f0, classes, params.strength, params.retune_ms)
                progress(0.3, "resynthesizing")
                resynthesized = _write_tuned(decoded, out_path, params.format, f0, target, rate, channels, progress)
            progress(0.85, "measuring")
            with sf.SoundFile(str(out_path)) as written:
                if written.frames != total:  # the contract: duration unchanged to the sample
                    raise RuntimeError(f"tuned output has {written.frames} samples, expected {total}")
                after = track_f0_file(written, rate) if resynthesized else f0

        before_cents = np.abs(cents_off(midi_before, classes)) if voiced.any() else np.zeros(0)
        voiced_after = after > 0
        after_cents = np.abs(cents_off(to_midi(after[voiced_after]), classes)) if voiced_after.any() else np.zeros(0)
        summary = {
            "tracker": "pyworld.harvest (WORLD), 5 ms hop, 65-1050 Hz",
            "key": key_used,
            "scale": params.scale,
            "allowed_pitch_classes": [NOTE_NAMES[c] for c in sorted(int(c) for c in classes)],
            "voiced_fraction": round(float(voiced.mean()), 4) if len(voiced) else 0.0,
            "mad_cents_before": _median(before_cents),
            "mad_cents_after": _median(after_cents),
            "resynthesized_windows": resynthesized,
        }
        pitch = {
            "hop_s": hop_samples(rate) / rate,
            "times_s": [round(i * hop_samples(rate) / rate, 5) for i in range(len(f0))],
            "f0_before_hz": [round(float(v), 2) for v in f0],
            "f0_target_hz": [round(float(v), 2) for v in target],
            "f0_after_hz": [round(float(v), 2) for v in after],
            "voiced": [bool(v) for v in voiced],
            "summary": summary,
        }
        pitch_path = out_dir / "pitch.json"
        pitch_path.write_text(json.dumps(pitch))
        progress(1.0, "done")
        return EngineResult(
            outputs=[
                OutputFile(out_path.name, out_path, audio.CONTENT_TYPES[params.format],
                           {"mad_cents_before": summary["mad_cents_before"],
                            "mad_cents_after": summary["mad_cents_after"], "key": key_used, "scale": params.scale}),
                OutputFile(pitch_path.name, pitch_path, "application/json"),
            ],
            metrics={"audio_seconds": total / rate},
        )  # fmt: skip


def _median(values: np.ndarray) -> float | None:
    return round(float(np.median(values)), 2) if len(values) else None


def _decode_to(input_path: Path, path: Path) -> tuple[int, int]:
    """Decode the input (any format) once into a float wav we can seek in; returns (rate, channels)."""
    info = audio.probe(input_path)
    sound: sf.SoundFile | None = None
    try:
        for block in audio.iter_blocks(input_path, block_seconds=BLOCK_SECONDS):
            if sound is None:
                sound = sf.SoundFile(str(path), "w", samplerate=info.sample_rate, channels=block.shape[0],
                                     subtype="FLOAT")  # fmt: skip
            sound.write(block.T)
        assert sound is not None
        return info.sample_rate, sound.channels
    finally:
        if sound is not None:
            sound.close()


def _write_tuned(
    decoded: sf.SoundFile,
    out_path: Path,
    fmt: str,
    f0: np.ndarray,
    target: np.ndarray,
    rate: int,
    channels: int,
    progress: ProgressFn,
) -> int:
    """Copy the original, replacing each window with its resynthesis (cross-faded); returns windows resynthesized."""
    hop = hop_samples(rate)
    total = decoded.frames
    windows = plan_windows(f0 > 0, rate, total)
    pad = round(ANALYSIS_PAD_S * rate / hop) * hop
    done = 0
    staged = np.zeros((channels, 0))  # output from `written` on, not final until the next window starts
    written = 0

    def read(start: int, stop: int) -> np.ndarray:
        decoded.seek(start)
        return decoded.read(stop - start, dtype="float64", always_2d=True).T

    with audio.AudioWriter(out_path, rate, channels, fmt) as writer:
        for index, window in enumerate(windows):
            # Everything before this window is final: the original (or earlier windows already blended in).
            staged_end = written + staged.shape[1]
            if window.start > staged_end:
                staged = np.concatenate([staged, read(staged_end, window.start)], axis=1)
            _flush(writer, staged[:, : window.start - written])
            staged, written = staged[:, window.start - written :], window.start
            staged_end = written + staged.shape[1]
            if window.stop > staged_end:
                staged = np.concatenate([staged, read(staged_end, window.stop)], axis=1)
            first_frame = max(0, window.start - pad) // hop
            seg_start, seg_stop = first_frame * hop, min(total, window.stop + pad)
            frames = frame_count(seg_stop - seg_start, rate)
            f0_seg = _frames(f0, first_frame, frames)
            new_seg = _frames(target, first_frame, frames)
            if np.array_equal(f0_seg, new_seg):
                continue  # nothing to correct here: the original stays, bit for bit
            segment = read(seg_start, seg_stop)
            offset = window.start - seg_start
            length = window.stop - window.start
            weight = np.ones(length)
            if window.ramp_in:
                weight[: window.ramp_in] = np.linspace(0.0, 1.0, window.ramp_in, endpoint=False)
            if window.ramp_out:
                weight[length - window.ramp_out :] = np.linspace(1.0, 0.0, window.ramp_out, endpoint=False)
            for ch in range(channels):
                y = resynthesize(np.ascontiguousarray(segment[ch]), f0_seg, new_seg, rate)[offset : offset + length]
                staged[ch, :length] = staged[ch, :length] * (1.0 - weight) + y * weight
            done += 1
            progress(0.3 + 0.55 * (index + 1) / len(windows), "resynthesizing")
        staged_end = written + staged.shape[1]
        for start in range(staged_end, total, round(BLOCK_SECONDS * rate)):  # the rest, original, in blocks
            staged = np.concatenate([staged, read(start, min(total, start + round(BLOCK_SECONDS * rate)))], axis=1)
            _flush(writer, staged)
            staged = staged[:, :0]
        _flush(writer, staged)
    return done


def _frames(track: np.ndarray, first: int, count: int) -> np.ndarray:
    part = track[first : first + count]
    return np.ascontiguousarray(np.pad(part, (0, count - len(part))))


def _flush(writer: audio.AudioWriter, block: np.ndarray) -> None:
    if block.shape[1]:
        writer.write(block.astype(np.float32))


def build_engine(model_key: str, weights_dir: Path, **options: Any) -> TuneEngine:
    """No weights: `model_key` and `weights_dir` are ignored."""
    return TuneEngine()
