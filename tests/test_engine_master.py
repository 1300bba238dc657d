"""master: loudness to target within 0.5 LU, true peak under the ceiling, reference matching, the streaming meter.

Every figure is checked with an independent measurement: pyloudnorm called directly on the whole decoded output,
and true peak from scipy's polyphase 4x upsampling (the engine's meter uses soxr).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import scipy.signal
import soundfile as sf
from pydantic import ValidationError

from inference import audio
from inference.base import EngineError, no_progress
from inference.loudness import LongTermSpectrum, LoudnessMeter, spectral_distance_db
from inference.master import PRESETS, MasterEngine
from inference.params import MasterParams
from inference.registry import TASKS, load_engine

pytestmark = pytest.mark.engine  # real DSP libraries (pedalboard, pyloudnorm, pyworld), seconds per test

RATE = 44100


def music_like(seconds: float, seed: int = 0, bright: bool = False) -> np.ndarray:
    """Stereo: a bass line, chords, a kick every half second and hiss; `bright` tilts it up (or down) in tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    bass = 0.4 * np.sin(2 * np.pi * 55 * 2 ** (np.floor(t) % 4 / 12) * t)
    chords = sum(0.12 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (261.6, 329.6, 392.0, 523.3))
    kick = 0.8 * np.exp(-((t % 0.5) * 30)) * np.sin(2 * np.pi * 60 * (t % 0.5))
    noise = rng.standard_normal((2, t.size)) * 0.05
    tilt = scipy.signal.butter(2, 3000 if bright else 800, "high" if bright else "low", fs=RATE, output="sos")
    noise = scipy.signal.sosfilt(tilt, noise, axis=1) * (4.0 if bright else 1.0)
    mono = bass + chords + kick
    return (np.stack([mono, 0.9 * mono]) + noise).astype(np.float64)


def write_at_lufs(path: Path, signal: np.ndarray, lufs: float) -> Path:
    """Scale to `lufs` (pyloudnorm), soft-saturating when needed so a loud one still fits under full scale."""
    meter = pyloudnorm.Meter(RATE)
    scaled = signal * 10 ** ((lufs - meter.integrated_loudness(signal.T)) / 20)
    for _ in range(20):
        if np.max(np.abs(scaled)) < 0.99:
            break
        scaled = np.tanh(scaled)  # denser, lower crest factor: a loud master's shape
        scaled *= 10 ** ((lufs - meter.integrated_loudness(scaled.T)) / 20)
    assert np.max(np.abs(scaled)) < 1.0
    sf.write(path, scaled.T, RATE, subtype="FLOAT")
    assert meter.integrated_loudness(sf.read(path)[0]) == pytest.approx(lufs, abs=0.05)
    return path


def independent_true_peak_dbtp(x: np.ndarray) -> float:
    """(samples, channels) -> dBTP from scipy's polyphase 4x upsampling (not the engine's soxr path)."""
    up = scipy.signal.resample_poly(x, 4, 1, axis=0)
    return float(20 * np.log10(np.max(np.abs(up))))


def master(source: Path, out_dir: Path, reference: Path | None = None, **params: object) -> tuple:
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = load_engine("master", TASKS["master"].model_key(None), out_dir)
    result = engine.run(source, MasterParams(**params), out_dir, no_progress,
                        extra_inputs={"reference": reference} if reference else None)  # fmt: skip
    assert [o.name for o in result.outputs] == [f"mastered.{params.get('format', 'wav')}", "report.json"]
    report = json.loads((out_dir / "report.json").read_text())
    mastered, rate = sf.read(result.outputs[0].path, always_2d=True)
    return report, mastered, rate


def check_target(report: dict, mastered: np.ndarray, rate: int, target: float, ceiling: float) -> None:
    lufs = pyloudnorm.Meter(rate).integrated_loudness(mastered)
    assert abs(lufs - target) <= 0.5
    assert independent_true_peak_dbtp(mastered) <= ceiling + 0.01
    assert report["output"]["integrated_lufs"] == pytest.approx(lufs, abs=0.01)
    assert report["output"]["true_peak_dbtp"] <= ceiling
    assert report["loudness_error_lu"] == pytest.approx(lufs - target, abs=0.01)


def test_streaming_meter_equals_pyloudnorm(tmp_path: Path) -> None:
    signal = music_like(7.3)
    meter = LoudnessMeter(RATE, 2)
    for start in range(0, signal.shape[1], 12345):  # odd block size: crosses the 100 ms sub-blocks
        meter.push(signal[:, start : start + 12345], last=start + 12345 >= signal.shape[1])
    assert meter.integrated_lufs() == pytest.approx(pyloudnorm.Meter(RATE).integrated_loudness(signal.T), abs=0.01)
    assert meter.true_peak_dbtp == pytest.approx(independent_true_peak_dbtp(signal.T), abs=0.05)


def test_loudness_range_of_a_10_lu_step() -> None:
    # EBU Tech 3342: 10 s of noise then the same 10 LU quieter gives a range of 10 LU. (pyloudnorm's own
    # loudness_range appends 1.5 s of silence first, which widens the range of short clips, so it is not the oracle.)
    noise = np.random.default_rng(3).standard_normal((1, 10 * RATE)) * 0.1
    meter = LoudnessMeter(RATE, 1, true_peak=False)
    meter.push(np.concatenate([noise, noise * 10 ** (-10 / 20)], axis=1), last=True)
    assert meter.loudness_range_lu() == pytest.approx(10.0, abs=0.3)


@pytest.mark.parametrize("input_lufs", [-30.0, -8.0])
def test_synthetic_inputs_reach_the_target(tmp_path: Path, input_lufs: float) -> None:
    source = write_at_lufs(tmp_path / "in.wav", music_like(12.0), input_lufs)
    report, mastered, rate = master(source, tmp_path / "out")
    check_target(report, mastered, rate, -14.0, -1.0)
    assert report["input"]["integrated_lufs"] == pytest.approx(input_lufs, abs=0.05)
    assert report["gain_applied_db"] == pytest.approx(report["output"]["integrated_lufs"] - input_lufs, abs=0.01)
    assert mastered.shape == (12 * RATE, 2)  # nothing lost or added


def test_shared_music_mix_reaches_the_target_for_every_preset(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "music_mix_20s.mp3"
    for preset, target, ceiling in (("neutral", -14.0, -1.0), ("warm", -16.0, -2.0), ("bright", -10.0, -1.0),
                                    ("punchy", -9.0, -0.5)):  # fmt: skip
        report, mastered, rate = master(source, tmp_path / preset, preset=preset, target_lufs=target,
                                        ceiling_dbtp=ceiling)  # fmt: skip
        check_target(report, mastered, rate, target, ceiling)
        assert report["chain"][1:-3] == [{"plugin": name, **args} for name, args in PRESETS[preset].eq]
        assert [stage["plugin"] for stage in report["chain"][-3:]] == ["Compressor", "Limiter", "Gain"]
        assert report["input"]["integrated_lufs"] == pytest.approx(
            pyloudnorm.Meter(44100).integrated_loudness(audio.decode(source).T), abs=0.01
        )


def test_reference_moves_the_tone_towards_it(tmp_path: Path) -> None:
    source = write_at_lufs(tmp_path / "bright.wav", music_like(10.0, seed=1, bright=True), -20.0)
    reference = write_at_lufs(tmp_path / "dark.wav", music_like(10.0, seed=2, bright=False), -11.0)
    report, mastered, rate = master(source, tmp_path / "out", reference=reference)

    def bands(x: np.ndarray) -> np.ndarray:
        ltas = LongTermSpectrum(RATE)
        ltas.push(x)
        return ltas.bands_db()

    ref_bands = bands(sf.read(reference, always_2d=True)[0].T)
    before = spectral_distance_db(bands(sf.read(source, always_2d=True)[0].T), ref_bands)
    after = spectral_distance_db(bands(mastered.T), ref_bands)
    assert after < 0.5 * before  # third-octave long-term spectra, level-normalised RMS dB difference
    assert report["reference"]["spectral_distance_db_before"] == pytest.approx(before, abs=0.01)
    assert report["reference"]["spectral_distance_db_after"] == pytest.approx(after, abs=0.05)
    # target_lufs left unset: the reference's loudness is the target
    check_target(report, mastered, rate, -11.0, -1.0)


def test_silent_input_is_a_user_error(tmp_path: Path) -> None:
    sf.write(tmp_path / "silence.wav", np.zeros((RATE, 2)), RATE)
    with pytest.raises(EngineError) as caught:
        MasterEngine().run(tmp_path / "silence.wav", MasterParams(), tmp_path, no_progress)
    assert caught.value.code == "silent_audio"


@pytest.mark.parametrize(
    "bad", [{"target_lufs": -30}, {"target_lufs": -5}, {"ceiling_dbtp": 0.5}, {"preset": "loud"}, {"extra": 1}]
)
def test_params_out_of_range_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError) as caught:
        MasterParams(**bad)
    assert caught.value.errors()[0]["loc"][0] == next(iter(bad))
