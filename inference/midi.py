"""Audio to MIDI with basic-pitch 0.4.0 (the ICASSP 2022 model shipped in its wheel) on onnxruntime.

We reproduce `basic_pitch.inference.predict` step for step (same windows, same model call, same note creation), but
feed the model from a streaming decoder instead of loading the whole file with librosa: memory holds the
model's posteriorgrams (about 150 KB per audio second) and one decode block, not the waveform.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
from basic_pitch.constants import ANNOTATIONS_FPS, AUDIO_N_SAMPLES, AUDIO_SAMPLE_RATE, FFT_HOP
from basic_pitch.inference import Model
from basic_pitch.note_creation import model_output_to_notes
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn, no_progress
from inference.params import MidiParams

# basic_pitch.inference.run_inference's framing: 30 model frames of overlap, half of it trimmed from each side.
_OVERLAP_FRAMES = 30
_OVERLAP = _OVERLAP_FRAMES * FFT_HOP
_HOP = AUDIO_N_SAMPLES - _OVERLAP
_TRIM = _OVERLAP_FRAMES // 2
_OUTPUT_KEYS = ("note", "onset", "contour")
_MIDI_TEMPO = 120.0  # upstream's default; note times are in seconds either way


def build_engine(model_key: str, weights_dir: Path, **options: Any) -> MidiEngine:
    """The model ships inside the basic-pitch wheel, so `weights_dir` is not read.

    We pass the `.onnx` file itself: `ICASSP_2022_MODEL_PATH` would pick the TensorFlow/CoreML/TFLite file
    whenever one of those runtimes happens to be importable.
    """
    if options:
        raise TypeError(f"unknown options for the midi engine: {sorted(options)}")
    return MidiEngine(build_icassp_2022_model_path(FilenameSuffix.onnx))


class MidiEngine:
    def __init__(self, model_path: Path) -> None:
        self.model = Model(model_path)
        if self.model.model_type != Model.MODEL_TYPES.ONNX:
            raise RuntimeError(f"basic-pitch loaded {model_path} with {self.model.model_type}, expected ONNX")
        self._warm_up()

    def _warm_up(self) -> None:
        """Run the whole pipeline once on a short tone so the first job does not pay for librosa's lazy imports and
        onnxruntime's first-run allocations (~0.35 s here); no numba compilation happens on this path."""
        t = np.arange(AUDIO_SAMPLE_RATE, dtype=np.float32) / AUDIO_SAMPLE_RATE
        tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
        self.notes(self.posteriorgram([tone])[0], MidiParams())

    def posteriorgram(
        self,
        blocks: Iterable[np.ndarray],
        on_window: Callable[[int], None] | None = None,
        expected_windows: int = 0,
    ) -> tuple[dict[str, np.ndarray], int]:
        """The model's note/onset/contour matrices for mono blocks at 22,050 Hz, and the number of samples seen.

        Equal to `basic_pitch.inference.run_inference` on the concatenated blocks. Windows are written into arrays
        sized from `expected_windows` (the probed duration), so the matrices are never held twice.
        """
        matrices: dict[str, np.ndarray] = {}
        filled = 0
        samples = 0

        def counted() -> Iterator[np.ndarray]:
            nonlocal samples
            for block in blocks:
                samples += block.shape[1]
                yield block[0]

        for index, window in enumerate(_windows(counted())):
            for key, value in self.model.predict(window[None, :, None]).items():
                piece = value[0, _TRIM:-_TRIM]
                matrix = matrices.get(key)
                if matrix is None or filled + len(piece) > len(matrix):
                    # First window, or the probe under-counted (VBR headers): grow, amortised by doubling.
                    rows = max(filled + len(piece), expected_windows * len(piece), 2 * filled)
                    grown = np.empty((rows, *piece.shape[1:]), dtype=piece.dtype)
                    if matrix is not None:
                        grown[:filled] = matrix[:filled]
                    matrices[key] = matrix = grown
                matrix[filled : filled + len(piece)] = piece
            filled += len(piece)
            if on_window is not None:
                on_window(index + 1)
        if samples == 0:
            raise EngineError("the audio is empty", code="empty_audio")
        frames = int(np.floor(samples * (ANNOTATIONS_FPS / AUDIO_SAMPLE_RATE)))
        return {key: matrices[key][:frames] for key in _OUTPUT_KEYS}, samples

    @staticmethod
    def notes(output: dict[str, np.ndarray], params: MidiParams) -> tuple[Any, list[tuple]]:
        """basic-pitch's note creation with our params; returns (pretty_midi.PrettyMIDI, note events)."""
        return model_output_to_notes(
            output,
            onset_thresh=params.onset_threshold,
            frame_thresh=params.frame_threshold,
            min_note_len=int(np.round(params.min_note_ms / 1000 * (AUDIO_SAMPLE_RATE / FFT_HOP))),
            min_freq=params.min_hz,
            max_freq=params.max_hz,
            multiple_pitch_bends=params.multiple_pitch_bends,
            melodia_trick=params.melodia_trick,
            midi_tempo=_MIDI_TEMPO,
        )

    def run(
        self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn = no_progress
    ) -> EngineResult:
        if input_path is None:
            raise EngineError("midi needs an audio file", code="missing_input")
        assert isinstance(params, MidiParams)
        info = audio.probe(input_path)
        expected_windows = max(1, math.ceil((info.duration_s * AUDIO_SAMPLE_RATE + _OVERLAP // 2) / _HOP))
        progress(0.0, "transcribing")
        output, samples = self.posteriorgram(
            audio.iter_blocks(input_path, sample_rate=AUDIO_SAMPLE_RATE, mono=True),
            on_window=lambda done: progress(min(0.9, 0.9 * done / expected_windows), "transcribing"),
            expected_windows=expected_windows,
        )
        progress(0.9, "notes")
        midi, events = self.notes(output, params)
        notes = sorted((_note_json(event) for event in events), key=lambda note: (note["start_s"], note["pitch"]))

        out_dir.mkdir(parents=True, exist_ok=True)
        midi_path = out_dir / "notes.mid"
        midi.write(str(midi_path))
        json_path = out_dir / "notes.json"
        json_path.write_text(json.dumps(notes))
        progress(1.0, "done")
        metadata = {"notes": len(notes)}
        return EngineResult(
            outputs=[
                OutputFile("notes.mid", midi_path, "audio/midi", metadata),
                OutputFile("notes.json", json_path, "application/json", metadata),
            ],
            metrics={"audio_seconds": samples / AUDIO_SAMPLE_RATE},
        )


def _windows(samples: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """basic-pitch's framing over a stream of mono chunks: half an overlap of zeros in front, a window of
    AUDIO_N_SAMPLES every _HOP samples while the window starts inside the audio, the last ones zero-padded."""
    buffer = np.zeros(_OVERLAP // 2, dtype=np.float32)
    for chunk in samples:
        buffer = np.concatenate([buffer, chunk.astype(np.float32, copy=False)])
        while buffer.size >= AUDIO_N_SAMPLES:
            yield buffer[:AUDIO_N_SAMPLES]
            buffer = buffer[_HOP:]
    while buffer.size > 0:
        yield np.pad(buffer, (0, AUDIO_N_SAMPLES - buffer.size))
        buffer = buffer[_HOP:]


def _note_json(event: tuple) -> dict[str, Any]:
    start, end, pitch, amplitude, bends = event
    return {
        "start_s": float(start),
        "end_s": float(end),
        "pitch": int(pitch),
        "velocity": int(np.round(127 * amplitude)),  # as written to notes.mid
        "amplitude": float(amplitude),
        # One value per model frame (~11.6 ms) across the note, in 1/3-semitone steps from the note's pitch.
        "pitch_bends": [int(bend) for bend in bends] if bends else [],
    }
