"""Audio to MIDI with basic-pitch 0.4.0 (the ICASSP 2022 model shipped in its wheel) on onnxruntime.

We reproduce `basic_pitch.inference.predict` step for step (same windows, same model call, same notes), but feed the
model from a streaming decoder instead of loading the whole file with librosa, and create notes with
`inference.midi_notes`, which keeps only the note matrix in memory (about 30 KB per audio second, a third of the
22,050 Hz waveform we never hold) and spills the rest of the posteriorgram to files.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
from basic_pitch.constants import ANNOT_N_FRAMES, ANNOTATIONS_FPS, AUDIO_N_SAMPLES, AUDIO_SAMPLE_RATE, FFT_HOP
from basic_pitch.inference import Model
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn, no_progress
from inference.midi_notes import NoteEvent, NoteOptions, Posteriorgram, posteriorgram_to_notes
from inference.params import MidiParams

# basic_pitch.inference.run_inference's framing: 30 model frames of overlap, half of it trimmed from each side.
_OVERLAP_FRAMES = 30
_OVERLAP = _OVERLAP_FRAMES * FFT_HOP
_HOP = AUDIO_N_SAMPLES - _OVERLAP
_TRIM = _OVERLAP_FRAMES // 2
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
        with tempfile.TemporaryDirectory() as folder, self.posteriorgram([tone], Path(folder)) as gram:
            self.notes(gram, MidiParams())

    def posteriorgram(
        self,
        blocks: Iterable[np.ndarray],
        folder: Path,
        on_window: Callable[[int], None] | None = None,
        expected_windows: int = 0,
    ) -> Posteriorgram:
        """The model's note/onset/contour matrices for mono blocks at 22,050 Hz, the onsets and contours spilled to
        files in `folder`. Equal to `basic_pitch.inference.run_inference` on the concatenated blocks."""
        samples = 0

        def counted() -> Iterator[np.ndarray]:
            nonlocal samples
            for block in blocks:
                samples += block.shape[1]
                yield block[0]

        gram = Posteriorgram(folder, expected_windows * (ANNOT_N_FRAMES - _OVERLAP_FRAMES))
        try:
            for index, window in enumerate(_windows(counted())):
                output = self.model.predict(window[None, :, None])
                gram.append(*(output[key][0, _TRIM:-_TRIM] for key in ("note", "onset", "contour")))
                if on_window is not None:
                    on_window(index + 1)
            if samples == 0:
                raise EngineError("the audio is empty", code="empty_audio")
            gram.finish(int(np.floor(samples * (ANNOTATIONS_FPS / AUDIO_SAMPLE_RATE))), samples)
        except BaseException:
            gram.close()
            raise
        return gram

    @staticmethod
    def notes(gram: Posteriorgram, params: MidiParams) -> tuple[Any, list[NoteEvent]]:
        """basic-pitch's note creation with our params; returns (pretty_midi.PrettyMIDI, note events)."""
        options = NoteOptions(
            onset_thresh=params.onset_threshold,
            frame_thresh=params.frame_threshold,
            min_note_len=int(np.round(params.min_note_ms / 1000 * (AUDIO_SAMPLE_RATE / FFT_HOP))),
            min_freq=params.min_hz,
            max_freq=params.max_hz,
            melodia_trick=params.melodia_trick,
            multiple_pitch_bends=params.multiple_pitch_bends,
            midi_tempo=_MIDI_TEMPO,
        )
        return posteriorgram_to_notes(gram, options)

    def run(
        self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn = no_progress
    ) -> EngineResult:
        if input_path is None:
            raise EngineError("midi needs an audio file", code="missing_input")
        assert isinstance(params, MidiParams)
        info = audio.probe(input_path)
        expected_windows = max(1, math.ceil((info.duration_s * AUDIO_SAMPLE_RATE + _OVERLAP // 2) / _HOP))
        progress(0.0, "transcribing")
        with (
            tempfile.TemporaryDirectory() as spill,
            self.posteriorgram(
                audio.iter_blocks(input_path, sample_rate=AUDIO_SAMPLE_RATE, mono=True),
                Path(spill),
                on_window=lambda done: progress(min(0.9, 0.9 * done / expected_windows), "transcribing"),
                expected_windows=expected_windows,
            ) as gram,
        ):
            progress(0.9, "notes")
            midi, events = self.notes(gram, params)
            samples = gram.samples
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
