"""basic-pitch's note creation (`basic_pitch.note_creation.model_output_to_notes`) in memory that does not grow with
the track beyond the note matrix.

Upstream works on the whole posteriorgram at once and makes float64 copies of it (inferred onsets, a peak matrix,
the remaining energy): about 6x the decoded audio, per audio minute. Its algorithm is not local, so windows with an
overlap would change the notes: inferred onsets are scaled by whole-track maxima, onset notes are built backwards in
time and each stops where later notes have used up the energy, and the melodia trick grows notes from the loudest
remaining cell of the whole track. We keep the algorithm, step for step, and change only where the data lives:

- the note matrix (88 float32 per frame, about 30 KB per audio second) stays in memory, because walks read it at
  random; upstream's `remaining_energy` becomes that matrix plus a one-byte-per-cell "used" mask;
- onsets and contours go to files: onsets are read back in chunks (once for the maxima, once for the peaks, from the
  end backwards), contours one note at a time for its pitch bends;
- the melodia trick finds the loudest remaining cell through per-block maxima instead of scanning the whole matrix.

`tests/test_engine_midi.py` checks that the notes equal upstream's exactly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from basic_pitch.constants import N_FREQ_BINS_CONTOURS, N_FREQ_BINS_NOTES
from basic_pitch.note_creation import (
    MAX_FREQ_IDX,
    MIDI_OFFSET,
    constrain_frequency,
    get_pitch_bends,
    model_frames_to_time,
    note_events_to_midi,
)

ENERGY_TOL = 11  # upstream's `output_to_notes_polyphonic` default: frames below threshold that end a note
CHUNK_ROWS = 8192  # onset rows read at once (~3 MB as float32)
BLOCK_ROWS = 1024  # rows per block of the melodia trick's running maxima
_FIRST_STEP = 64  # a walk reads this many rows first, then doubles: most notes are shorter

FrameNote = tuple[int, int, int, float]  # (start frame, end frame, MIDI pitch, amplitude), as upstream's
NoteEvent = tuple[float, float, int, float, list[int] | None]  # seconds instead of frames, plus pitch bends


class _Spill:
    """float32 rows of a fixed width appended to a file and read back by row range."""

    def __init__(self, path: Path, columns: int) -> None:
        self.columns = columns
        self.rows = 0
        self._file = path.open("w+b")

    def append(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
        self.rows += len(rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        self._file.flush()
        width = self.columns * 4
        data = os.pread(self._file.fileno(), (stop - start) * width, start * width)
        return np.frombuffer(data, dtype=np.float32).reshape(-1, self.columns).copy()

    def close(self) -> None:
        self._file.close()


class Posteriorgram:
    """The model's note, onset and contour matrices for one track, appended window by window.

    The note matrix lives in memory, presized from `expected_frames` (the probed duration) and grown by doubling if
    the probe under-counted; onsets and contours are spilled to files in `folder`. `finish(frames, samples)` trims to
    the track's length as upstream's `unwrap_output` does.
    """

    def __init__(self, folder: Path, expected_frames: int = 0) -> None:
        self._note = np.empty((max(expected_frames, 0), N_FREQ_BINS_NOTES), dtype=np.float32)
        self._filled = 0
        self.frames = 0
        self.samples = 0  # audio samples the matrices cover, set by `finish`
        self.onset = _Spill(folder / "onset.f32", N_FREQ_BINS_NOTES)
        self.contour = _Spill(folder / "contour.f32", N_FREQ_BINS_CONTOURS)

    def append(self, note: np.ndarray, onset: np.ndarray, contour: np.ndarray) -> None:
        rows = len(note)
        if self._filled + rows > len(self._note):
            grown = np.empty((max(self._filled + rows, 2 * self._filled), N_FREQ_BINS_NOTES), dtype=np.float32)
            grown[: self._filled] = self._note[: self._filled]
            self._note = grown
        self._note[self._filled : self._filled + rows] = note
        self._filled += rows
        self.onset.append(onset)
        self.contour.append(contour)

    def finish(self, frames: int, samples: int) -> None:
        self.frames = min(frames, self._filled)
        self.samples = samples

    @property
    def note(self) -> np.ndarray:
        return self._note[: self.frames]

    def close(self) -> None:
        self.onset.close()
        self.contour.close()

    def __enter__(self) -> Posteriorgram:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class NoteOptions:
    """The arguments of upstream's `model_output_to_notes`, by the same names (inferred onsets and pitch bends stay
    on, as its defaults)."""

    onset_thresh: float
    frame_thresh: float
    min_note_len: int  # frames
    min_freq: float | None = None
    max_freq: float | None = None
    melodia_trick: bool = True
    multiple_pitch_bends: bool = False
    midi_tempo: float = 120.0


def posteriorgram_to_notes(
    gram: Posteriorgram, options: NoteOptions, *, chunk_rows: int = CHUNK_ROWS, block_rows: int = BLOCK_ROWS
) -> tuple[Any, list[NoteEvent]]:
    """`model_output_to_notes(output, **asdict(options))`: the same (pretty_midi.PrettyMIDI, note events). Like
    upstream, it zeroes the note matrix outside [min_freq, max_freq]."""
    notes = _frame_notes(gram, options, chunk_rows, block_rows)
    times = model_frames_to_time(gram.frames)
    events: list[NoteEvent] = []
    for start, end, pitch, amplitude in notes:
        # get_pitch_bends reads contours[start:end] only, so it gets those rows and the note shifted to row 0.
        _, _, _, _, bends = get_pitch_bends(gram.contour.read(start, end), [(0, end - start, pitch, amplitude)])[0]
        events.append((times[start], times[end], pitch, amplitude, bends))
    return note_events_to_midi(events, options.multiple_pitch_bends, options.midi_tempo), events


def _frame_notes(gram: Posteriorgram, options: NoteOptions, chunk_rows: int, block_rows: int) -> list[FrameNote]:
    """`output_to_notes_polyphonic(..., infer_onsets=True)`, chunk by chunk."""
    onset_thresh, frame_thresh, min_note_len = options.onset_thresh, options.frame_thresh, options.min_note_len
    if not onset_thresh > 0:
        # At 0 every cell of the matrix, peak or not, would start a note walk.
        raise ValueError("onset_thresh must be positive")
    n_frames = gram.frames
    if n_frames == 0:
        return []
    frames = gram.note
    constrain_frequency(frames, frames, options.max_freq, options.min_freq)
    onsets = _InferredOnsets(gram, frames, options.min_freq, options.max_freq, chunk_rows)
    energy = _RemainingEnergy(frames, block_rows)
    notes: list[FrameNote] = []

    # Onset notes, backwards in time as upstream (each stops where later notes used the energy up).
    for chunk_start in reversed(range(0, n_frames, chunk_rows)):
        rows, columns = onsets.peaks(chunk_start, min(n_frames, chunk_start + chunk_rows), onset_thresh)
        for start, column in zip(rows[::-1].tolist(), columns[::-1].tolist(), strict=True):
            if start >= n_frames - 1:
                continue
            walked, below = energy.walk_forward(column, start + 1, n_frames - 1, frame_thresh)
            end = walked - below  # back to the last frame above the threshold
            if end - start <= min_note_len:
                continue
            energy.use(start, end, column)
            notes.append((start, end, column + MIDI_OFFSET, np.mean(frames[start:end, column])))

    if options.melodia_trick:
        while True:
            value, middle, column = energy.loudest()
            if not float(value) > frame_thresh:
                break
            energy.use(middle, middle + 1, column, neighbours=False)
            walked, below = energy.walk_forward(column, middle + 1, n_frames - 1, frame_thresh)
            energy.use(middle + 1, walked, column)  # upstream zeroes every frame a walk passes, below or not
            end = walked - 1 - below
            walked_back, below_back = energy.walk_backward(column, middle - 1, frame_thresh)
            energy.use(walked_back + 1, middle, column)
            start = walked_back + 1 + below_back
            if end - start <= min_note_len:
                continue
            notes.append((start, end, column + MIDI_OFFSET, np.mean(frames[start:end, column])))
    return notes


class _InferredOnsets:
    """Upstream's `get_infered_onsets` and peak picking over spilled onsets, a chunk at a time.

    Inferred onsets are max(onset, scaled frame difference), where the scale is max(onsets) / max(frame
    difference) over the whole track: one pass finds both maxima, then `peaks` recomputes each chunk. The arithmetic is
    upstream's, in the same dtypes and order, so the values are bit-identical.
    """

    def __init__(
        self, gram: Posteriorgram, frames: np.ndarray, min_freq: float | None, max_freq: float | None, chunk_rows: int
    ) -> None:
        self._gram, self._frames = gram, frames
        self._min_freq, self._max_freq = min_freq, max_freq
        onset_max: Any = None
        diff_max: Any = None
        for start in range(0, gram.frames, chunk_rows):
            stop = min(gram.frames, start + chunk_rows)
            chunk_onset_max, chunk_diff_max = np.max(self._onsets(start, stop)), np.max(self._frame_diff(start, stop))
            onset_max = chunk_onset_max if onset_max is None else max(onset_max, chunk_onset_max)
            diff_max = chunk_diff_max if diff_max is None else max(diff_max, chunk_diff_max)
        self._onset_max, self._diff_max = onset_max, diff_max

    def _onsets(self, start: int, stop: int) -> np.ndarray:
        onsets = self._gram.onset.read(start, stop)
        constrain_frequency(onsets, onsets, self._max_freq, self._min_freq)
        return onsets

    def _frame_diff(self, start: int, stop: int) -> np.ndarray:
        """min over n in (1, 2) of frames[t] - frames[t - n] (zero before the track), floored at 0, zero for t < 2."""
        before = max(0, start - 2)
        padded = np.concatenate(
            [np.zeros((2 - (start - before), self._frames.shape[1])), self._frames[before:stop]]
        )  # float64, as upstream's zero-padded copies
        current = padded[2:]
        diff = np.min([current - padded[1:-1], current - padded[:-2]], axis=0)
        diff[diff < 0] = 0
        diff[: max(0, 2 - start)] = 0
        return diff

    def _inferred(self, start: int, stop: int) -> np.ndarray:
        scaled = self._onset_max * self._frame_diff(start, stop) / self._diff_max
        return np.max([self._onsets(start, stop), scaled], axis=0)

    def peaks(self, start: int, stop: int, onset_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) of the cells in [start, stop) that are local maxima in time (`scipy.signal.argrelmax`,
        whose clipped edges never count) at or above `onset_thresh`, in `np.where` order."""
        n_frames = self._gram.frames
        before, after = max(0, start - 1), min(n_frames, stop + 1)
        values = self._inferred(before, after)
        rows = np.arange(start, stop)
        middle = values[rows - before]
        peak = (middle > values[np.maximum(rows - 1, 0) - before]) & (
            middle > values[np.minimum(rows + 1, n_frames - 1) - before]
        )
        found_rows, columns = np.nonzero(peak & (middle >= onset_thresh))
        return found_rows + start, columns


class _RemainingEnergy:
    """Upstream's `remaining_energy`: the note matrix with the cells notes have used set to zero."""

    def __init__(self, frames: np.ndarray, block_rows: int) -> None:
        self._frames = frames
        self._used = np.zeros(frames.shape, dtype=bool)
        self._block_rows = block_rows
        self._block_max: np.ndarray | None = None  # built on the first `loudest` call
        self._stale: set[int] = set()

    def _values(self, start: int, stop: int, column: int) -> np.ndarray:
        values = self._frames[start:stop, column].astype(np.float64)  # upstream compares in float64
        values[self._used[start:stop, column]] = 0.0
        return values

    def use(self, start: int, stop: int, column: int, *, neighbours: bool = True) -> None:
        """Zero rows [start, stop) of `column`, and of the pitches on either side when `neighbours`."""
        if stop <= start:
            return
        low, high = (max(column - 1, 0), min(column + 1, MAX_FREQ_IDX) + 1) if neighbours else (column, column + 1)
        self._used[start:stop, low:high] = True
        if self._block_max is not None:
            self._stale.update(range(start // self._block_rows, (stop - 1) // self._block_rows + 1))

    def walk_forward(self, column: int, start: int, stop: int, threshold: float) -> tuple[int, int]:
        """Upstream's `i = start; k = 0; while i < stop and k < ENERGY_TOL: (k += 1 if below else k = 0); i += 1`,
        returning (i, k) at its exit."""
        i, below, step = start, 0, _FIRST_STEP
        while i < stop:
            end = min(stop, i + step)
            run = _below_runs(self._values(i, end, column) < threshold, below)
            hit = np.flatnonzero(run >= ENERGY_TOL)
            if hit.size:
                return i + int(hit[0]) + 1, ENERGY_TOL
            below, i, step = int(run[-1]), end, 2 * step
        return i, below

    def walk_backward(self, column: int, start: int, threshold: float) -> tuple[int, int]:
        """Upstream's backward pass: `i = start` down to 1 while k < ENERGY_TOL, returning (i, k) at its exit."""
        i, below, step = start, 0, _FIRST_STEP
        while i > 0:
            low = max(0, i - step)  # this piece reads rows i, i - 1, ..., low + 1
            run = _below_runs((self._values(low + 1, i + 1, column) < threshold)[::-1], below)
            hit = np.flatnonzero(run >= ENERGY_TOL)
            if hit.size:
                return i - int(hit[0]) - 1, ENERGY_TOL
            below, i, step = int(run[-1]), low, 2 * step
        return i, below

    def _block(self, index: int) -> np.ndarray:
        rows = slice(index * self._block_rows, (index + 1) * self._block_rows)
        return np.where(self._used[rows], np.float32(0), self._frames[rows])

    def loudest(self) -> tuple[np.float32, int, int]:
        """(value, row, column) of `np.argmax(remaining_energy)`: the first maximum in row-major order."""
        if self._block_max is None:
            blocks = math.ceil(len(self._frames) / self._block_rows)
            self._block_max = np.array([self._block(b).max() for b in range(blocks)], dtype=np.float32)
        for index in self._stale:
            self._block_max[index] = self._block(index).max()
        self._stale.clear()
        index = int(np.argmax(self._block_max))  # the first block holding the maximum
        block = self._block(index)
        row, column = divmod(int(np.argmax(block)), block.shape[1])
        return block[row, column], index * self._block_rows + row, column


def _below_runs(below: np.ndarray, carried: int) -> np.ndarray:
    """For each cell, the number of consecutive below-threshold cells ending there, counting `carried` before."""
    positions = np.arange(len(below))
    last_above = np.maximum.accumulate(np.where(below, -1, positions))
    return np.where(last_above >= 0, positions - last_above, positions + 1 + carried)
