"""Benchmark cases for `midi`: our engine vs `basic_pitch.inference.predict` (+ writing the MIDI file and the note
events as JSON, the two files ours writes), both on the real ICASSP 2022 model that ships in the basic-pitch wheel,
run through onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from basic_pitch.inference import predict

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.midi import MidiEngine, build_engine
from inference.params import MidiParams

RATE = 44100
_SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


def make_input(minutes: float, folder: Path) -> Path:
    """A mono 16-bit wav of plucked harmonic notes walking up a C major scale."""
    note = int(0.25 * RATE)

    def samples(n: np.ndarray) -> np.ndarray:
        pitch = np.asarray(_SCALE)[(n // note) % len(_SCALE)]
        t = (n % note) / RATE
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = np.sin(2 * np.pi * f0 * t) + 0.25 * np.sin(4 * np.pi * f0 * t)
        return 0.3 * tone * np.exp(-6 * t)

    return write_wav(folder / f"melody_{minutes:g}min.wav", minutes, RATE, 1, samples)


def setup(scratch: Path) -> MidiEngine:
    return build_engine("basic-pitch", scratch)


def ours(engine: MidiEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, MidiParams(), out_dir, no_progress)


def direct(engine: MidiEngine, input_path: Path, out_dir: Path) -> None:
    _, midi, events = predict(input_path, engine.model)
    midi.write(str(out_dir / "notes.mid"))
    notes = [
        {"start_s": float(start), "end_s": float(end), "pitch": int(pitch), "amplitude": float(amplitude),
         "pitch_bends": [int(bend) for bend in bends or []]}
        for start, end, pitch, amplitude, bends in events
    ]  # fmt: skip
    (out_dir / "notes.json").write_text(json.dumps(notes))


CASES: list[BenchCase] = [
    BenchCase(name="midi basic-pitch (real model, onnx)", setup=setup, ours=ours, direct=direct, make_input=make_input),
]
