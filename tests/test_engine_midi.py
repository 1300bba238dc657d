"""The midi engine (basic-pitch's bundled ONNX model) on a melody the test synthesises and on the upstream reference."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from basic_pitch.note_creation import model_output_to_notes

from inference.base import EngineError
from inference.midi import build_engine
from inference.midi_notes import NoteOptions, Posteriorgram, posteriorgram_to_notes
from inference.params import MidiParams

pytestmark = pytest.mark.engine
MELODY = [(0.25, 69), (0.85, 72), (1.45, 76), (2.05, 67)]  # (onset s, MIDI pitch), 0.5 s each


@pytest.fixture(scope="session")
def engine():
    return build_engine("basic-pitch", Path("unused"))


@pytest.fixture(scope="session")
def melody(tmp_path_factory) -> Path:
    """Harmonic tones with a plucked envelope, at 44.1 kHz stereo (the engine resamples and downmixes)."""
    rate = 44100
    signal = np.zeros(int(3.0 * rate))
    for onset, pitch in MELODY:
        t = np.arange(int(0.5 * rate)) / rate
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k**2 for k in (1, 2, 3))
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-3 * t)
        start = int(onset * rate)
        signal[start : start + t.size] += 0.3 * tone * envelope
    path = tmp_path_factory.mktemp("input") / "melody.wav"
    sf.write(str(path), np.stack([signal, signal], axis=1).astype(np.float32), rate)
    return path


def test_synthesised_melody_gives_its_notes(engine, melody, tmp_path):
    events: list[float] = []
    result = engine.run(melody, MidiParams(), tmp_path, lambda fraction, stage: events.append(fraction))

    assert [(o.name, o.content_type) for o in result.outputs] == [
        ("notes.mid", "audio/midi"),
        ("notes.json", "application/json"),
    ]
    assert result.metrics["audio_seconds"] == pytest.approx(3.0, abs=1e-3)
    assert events[0] == 0.0 and events[-1] == 1.0 and events == sorted(events)
    notes = json.loads(result.outputs[1].path.read_text())
    main = [n for n in notes if n["end_s"] - n["start_s"] > 0.2]
    assert [n["pitch"] for n in main] == [pitch for _, pitch in MELODY]
    for note, (onset, _) in zip(main, MELODY, strict=True):
        assert abs(note["start_s"] - onset) < 0.05
        assert 1 <= note["velocity"] <= 127 and isinstance(note["pitch_bends"], list)
    midi = pretty_midi.PrettyMIDI(str(result.outputs[0].path))
    assert sorted(n.pitch for n in midi.instruments[0].notes) == sorted(n["pitch"] for n in notes)


def test_params_reach_note_creation(engine, melody, tmp_path):
    high_only = engine.run(melody, MidiParams(min_hz=300.0), tmp_path / "a", lambda f, s: None)
    pitches = {n["pitch"] for n in json.loads(high_only.outputs[1].path.read_text())}
    assert pitches and min(pitches) >= 62  # 300 Hz is MIDI 62.04: the 67 is kept, nothing below
    long_only = engine.run(melody, MidiParams(min_note_ms=1000.0), tmp_path / "b", lambda f, s: None)
    assert json.loads(long_only.outputs[1].path.read_text()) == []
    strict = engine.run(melody, MidiParams(onset_threshold=1.0, frame_threshold=1.0), tmp_path / "c", lambda f, s: None)
    assert json.loads(strict.outputs[1].path.read_text()) == []


def test_bad_input_raises_engine_error(engine, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF but not really a wave file" * 10)
    with pytest.raises(EngineError) as caught:
        engine.run(junk, MidiParams(), tmp_path / "out", lambda f, s: None)
    assert caught.value.code == "undecodable_audio"


def test_matches_basic_pitch_reference_note_events(engine, tmp_path, shared_data):
    """Like upstream's tests/test_inference.py::test_predict (default params): same notes within 1e-4."""
    reference = shared_data / "vocal_melody_vocadito_10.basic_pitch_0.4.0_note_events.npz"
    expected = np.load(reference, allow_pickle=True)["arr_0"]
    result = engine.run(shared_data / "vocal_melody_vocadito_10.wav", MidiParams(), tmp_path, lambda f, s: None)
    notes = json.loads(result.outputs[1].path.read_text())
    # Upstream's list is in creation order; ours is sorted by onset then pitch.
    expected = sorted(expected, key=lambda e: (float(e[0]), int(e[2])))
    assert len(notes) == len(expected) == 28
    for note, (start, end, pitch, amplitude, bends) in zip(notes, expected, strict=True):
        np.testing.assert_allclose(
            [note["start_s"], note["end_s"], note["pitch"], note["amplitude"]],
            [start, end, pitch, amplitude],
            atol=1e-4,
            rtol=0,
        )
        assert note["pitch_bends"] == [int(b) for b in bends]


def _structured_posteriorgram(frames: int, seed: int) -> dict[str, np.ndarray]:
    """Random notes of random lengths (some longer than the chunks below), quieter sustains with no onset (food for
    the melodia trick), repeated and neighbouring pitches, and low-level noise: every branch of note creation runs."""
    rng = np.random.default_rng(seed)
    note = rng.uniform(0.0, 0.2, (frames, 88)).astype(np.float32)
    onset = rng.uniform(0.0, 0.3, (frames, 88)).astype(np.float32)
    for _ in range(frames // 6):
        start, pitch = int(rng.integers(0, frames)), int(rng.integers(0, 88))
        length = int(rng.choice([5, 12, 30, 80, 400]))
        level = rng.uniform(0.25, 1.0)
        decay = np.exp(-np.arange(min(length, frames - start)) / rng.uniform(20, 300))
        note[start : start + length, pitch] = np.maximum(note[start : start + length, pitch], level * decay)
        if rng.random() < 0.7:  # the rest have no onset: only the melodia trick can find them
            onset[start, pitch] = rng.uniform(0.3, 1.0)
    contour = rng.uniform(0.0, 1.0, (frames, 264)).astype(np.float32)
    return {"note": note, "onset": onset, "contour": contour}


NOTE_CREATION_PARAMS = [
    {"onset_thresh": 0.5, "frame_thresh": 0.3, "min_note_len": 11, "min_freq": None, "max_freq": None},
    {"onset_thresh": 0.3, "frame_thresh": 0.15, "min_note_len": 3, "min_freq": None, "max_freq": None},
    {"onset_thresh": 0.7, "frame_thresh": 0.5, "min_note_len": 20, "min_freq": 80.0, "max_freq": 900.0},
]


@pytest.mark.parametrize("melodia_trick", [True, False])
@pytest.mark.parametrize("params", NOTE_CREATION_PARAMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_note_creation_equals_upstream(tmp_path, seed, params, melodia_trick):
    """Chunked note creation gives upstream's notes exactly: same order, frames, amplitudes and pitch bends, with
    chunks and melodia blocks far smaller than the notes so that every kind of boundary is crossed."""
    output = _structured_posteriorgram(2500, seed)
    options = NoteOptions(melodia_trick=melodia_trick, **params)
    # upstream's unwrap_output trims the matrices to the track's length; 2490 is not a multiple of the 142 rows that
    # one basic-pitch window gives after trimming.
    expected_midi, expected = model_output_to_notes(
        {key: value[:2490].copy() for key, value in output.items()}, **dataclasses.asdict(options)
    )
    with Posteriorgram(tmp_path, expected_frames=100) as gram:  # under-counted on purpose: the matrix must grow
        for start in range(0, 2500, 142):
            gram.append(*(output[key][start : start + 142] for key in ("note", "onset", "contour")))
        gram.finish(2490, samples=2490 * 256)
        midi, events = posteriorgram_to_notes(gram, options, chunk_rows=97, block_rows=53)

    assert len(expected) > 20
    assert events == expected
    assert _midi_events(midi) == _midi_events(expected_midi)


def _midi_events(midi: pretty_midi.PrettyMIDI) -> list[tuple]:
    return [(n.start, n.end, n.pitch, n.velocity) for instrument in midi.instruments for n in instrument.notes] + [
        (b.time, b.pitch) for instrument in midi.instruments for b in instrument.pitch_bends
    ]


def test_note_creation_rejects_a_zero_onset_threshold(tmp_path):
    with Posteriorgram(tmp_path) as gram:
        gram.append(*(value[:142] for value in _structured_posteriorgram(142, 0).values()))
        gram.finish(142, samples=142 * 256)
        with pytest.raises(ValueError, match="onset_thresh"):
            posteriorgram_to_notes(gram, NoteOptions(onset_thresh=0.0, frame_thresh=0.3, min_note_len=11))
