"""tune: pitch pulled onto the scale (measured again with the same tracker, Harvest), duration kept to the sample,
unvoiced audio untouched, strength=0 returns the input exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from inference.base import no_progress
from inference.params import TuneParams
from inference.registry import TASKS, load_engine
from inference.tune import cents_off, hop_samples, plan_windows, to_midi, track_f0, track_f0_file

pytestmark = pytest.mark.engine  # real DSP libraries (pedalboard, pyloudnorm, pyworld), seconds per test

RATE = 44100
A3 = 220.0


def harmonic_tone(f0: np.ndarray, rate: int = RATE) -> np.ndarray:
    """A voice-like tone (20 harmonics, 1/k) following the per-sample f0 track, with 20 ms fades."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 21))
    fade = np.minimum(1.0, np.minimum(np.arange(len(f0)), np.arange(len(f0))[::-1]) / (0.02 * rate))
    return (tone * fade).astype(np.float64)


def tune(source: Path, out_dir: Path, **params: object) -> tuple[np.ndarray, dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = load_engine("tune", TASKS["tune"].model_key(None), out_dir)
    result = engine.run(source, TuneParams(**params), out_dir, no_progress)
    assert [o.name for o in result.outputs] == [f"tuned.{params.get('format', 'wav')}", "pitch.json"]
    tuned, rate = sf.read(result.outputs[0].path, always_2d=True)
    return tuned, json.loads((out_dir / "pitch.json").read_text())


def mad_from_semitones(x: np.ndarray, rate: int) -> float:
    """Median |cents| from the nearest semitone over voiced frames, with the engine's tracker called directly."""
    f0 = track_f0(np.ascontiguousarray(x, dtype=np.float64), rate)
    return float(np.median(np.abs(cents_off(to_midi(f0[f0 > 0]), np.arange(12)))))


def test_shared_vocal_is_pulled_onto_semitones(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "vocal_melody_vocadito_10.wav"
    original, rate = sf.read(source, always_2d=True)
    tuned, pitch = tune(source, tmp_path, scale="chromatic", strength=1.0)

    assert tuned.shape == original.shape  # duration unchanged to the sample
    before, after = mad_from_semitones(original[:, 0], rate), mad_from_semitones(tuned[:, 0], rate)
    assert after <= 10.0 and after < before
    summary = pitch["summary"]
    assert summary["mad_cents_before"] == pytest.approx(before, abs=3.0)  # the engine also gates near-silence
    assert summary["mad_cents_after"] <= 10.0 and summary["mad_cents_after"] < summary["mad_cents_before"]
    frames = len(pitch["times_s"])
    assert len(pitch["f0_before_hz"]) == len(pitch["f0_after_hz"]) == len(pitch["voiced"]) == frames
    assert pitch["hop_s"] == hop_samples(rate) / rate and pitch["times_s"][1] == pytest.approx(pitch["hop_s"], abs=1e-5)

    # Unvoiced audio outside the resynthesized windows is the input, sample for sample (24-bit output of 16-bit input).
    voiced = np.asarray(pitch["voiced"])
    untouched = np.ones(len(original), bool)
    for window in plan_windows(voiced, rate, len(original)):
        untouched[window.start : window.stop] = False
    assert untouched.sum() > 0.05 * rate
    np.testing.assert_array_equal(tuned[untouched], original[untouched])


def test_vibrato_tone_40_cents_sharp_comes_out_on_the_note(tmp_path: Path) -> None:
    t = np.arange(int(2.0 * RATE)) / RATE
    f0 = A3 * 2 ** ((40 + 25 * np.sin(2 * np.pi * 5.5 * t)) / 1200)  # 40 cents sharp, +-25 cents vibrato
    sf.write(tmp_path / "vibrato.wav", harmonic_tone(f0), RATE, subtype="FLOAT")
    tuned, pitch = tune(tmp_path / "vibrato.wav", tmp_path / "out", scale="minor", key="A", strength=1.0)

    assert tuned.shape == (len(t), 1)
    tracked = track_f0(tuned[:, 0], RATE)
    cents = 1200 * np.log2(tracked[tracked > 0] / A3)
    assert abs(np.median(cents)) <= 10.0
    assert np.percentile(np.abs(cents), 90) <= 15.0  # the vibrato is gone too (strength 1 = hard tune)
    assert pitch["summary"]["mad_cents_before"] > 30.0


def test_scale_and_auto_key(tmp_path: Path) -> None:
    # C#4 + 30 cents: in C major the nearest allowed note is D4 (70 cents up), not C#.
    cs4 = 277.18 * 2 ** (30 / 1200)
    sf.write(tmp_path / "cs.wav", harmonic_tone(np.full(RATE, cs4)), RATE, subtype="FLOAT")
    tuned, pitch = tune(tmp_path / "cs.wav", tmp_path / "out", key="C", scale="major", retune_ms=0)
    tracked = track_f0(tuned[:, 0], RATE)
    d4 = 293.66
    assert abs(np.median(1200 * np.log2(tracked[tracked > 0] / d4))) <= 10.0
    assert pitch["summary"]["key"] == "C" and "C#" not in pitch["summary"]["allowed_pitch_classes"]

    # auto: a melody on the A minor pentatonic's notes (A C D E G) sung 20 cents flat finds a tonic whose scale
    # holds all five notes.
    notes = [220.0, 261.63, 293.66, 329.63, 392.0]
    melody = np.concatenate([np.full(RATE // 4, f * 2 ** (-20 / 1200)) for f in notes * 2])
    sf.write(tmp_path / "melody.wav", harmonic_tone(melody), RATE, subtype="FLOAT")
    _, pitch = tune(tmp_path / "melody.wav", tmp_path / "auto", key="auto", scale="minor_pentatonic")
    assert pitch["summary"]["key"] == "A"


def test_strength_zero_returns_the_input_exactly(tmp_path: Path) -> None:
    # Resynthesis error at strength 0 is zero by design: windows with nothing to correct are copied, not
    # resynthesized. (WORLD's own analysis-resynthesis, when it runs, keeps f0 within ~0.5 cents on a clean tone.)
    t = np.arange(int(1.5 * RATE)) / RATE
    sharp = harmonic_tone(A3 * 2 ** (35 / 1200) * np.ones_like(t))
    stereo = np.stack([sharp, 0.5 * harmonic_tone(np.full(len(t), 300.0))])
    sf.write(tmp_path / "in.wav", stereo.T, 48000, subtype="PCM_16")
    original = sf.read(tmp_path / "in.wav", always_2d=True)[0]
    tuned, pitch = tune(tmp_path / "in.wav", tmp_path / "out", strength=0.0)
    np.testing.assert_array_equal(tuned, original)
    assert pitch["summary"]["resynthesized_windows"] == 0
    # The engine reports f0 after = f0 before without measuring again when nothing was resynthesized: measure the
    # written output with the same tracker here, so the report is checked against the file, not against itself.
    with sf.SoundFile(str(tmp_path / "out" / "tuned.wav")) as written:
        measured = track_f0_file(written, written.samplerate)
    assert pitch["f0_after_hz"] == [round(float(v), 2) for v in measured]
    voiced = measured > 0
    assert voiced.mean() > 0.5  # the tones are still there: the channel mean still tracks the sharp A3 (at 48 kHz)
    sharp_hz = A3 * 2 ** (35 / 1200) * 48000 / RATE
    assert abs(np.median(1200 * np.log2(measured[voiced] / sharp_hz))) < 5.0


@pytest.mark.parametrize("bad", [{"strength": 1.5}, {"retune_ms": -1}, {"key": "H"}, {"scale": "blues"}])
def test_params_out_of_range_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError) as caught:
        TuneParams(**bad)
    assert caught.value.errors()[0]["loc"][0] == next(iter(bad))
