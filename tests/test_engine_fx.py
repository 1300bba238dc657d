"""fx: the streamed chain equals the same pedalboard chain applied directly; bad entries are rejected by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pedalboard
import pytest
import soundfile as sf
from pydantic import ValidationError

from inference.base import EngineError, no_progress
from inference.fx import BLOCK_SECONDS, FxEngine
from inference.params import FX_EFFECTS, FxParams
from inference.registry import TASKS, load_engine

pytestmark = pytest.mark.engine  # real DSP libraries (pedalboard, pyloudnorm, pyworld), seconds per test

RATE = 44100

# Every whitelisted effect but pitch_shift (see inference/fx.py), with non-default settings. bitcrush comes first:
# after a filter, a quantiser turns float rounding that depends on block boundaries (~1e-7, JUCE's vectorised IIRs)
# into whole quantisation steps, in a one-shot call as much as in ours.
CHAIN = [
    {"effect": "bitcrush", "params": {"bit_depth": 12}},
    {"effect": "highpass", "params": {"cutoff_frequency_hz": 60}},
    {"effect": "lowshelf", "params": {"cutoff_frequency_hz": 200, "gain_db": 3, "q": 0.8}},
    {"effect": "peak", "params": {"cutoff_frequency_hz": 1500, "gain_db": -4, "q": 2}},
    {"effect": "highshelf", "params": {"cutoff_frequency_hz": 7000, "gain_db": 2}},
    {"effect": "compressor", "params": {"threshold_db": -20, "ratio": 4, "attack_ms": 5, "release_ms": 80}},
    {"effect": "distortion", "params": {"drive_db": 6}},
    {"effect": "chorus", "params": {"rate_hz": 0.8, "depth": 0.3, "mix": 0.4}},
    {"effect": "phaser", "params": {"rate_hz": 0.5, "mix": 0.3}},
    {"effect": "delay", "params": {"delay_seconds": 0.25, "feedback": 0.4, "mix": 0.3}},
    {"effect": "reverb", "params": {"room_size": 0.7, "wet_level": 0.3}},
    {"effect": "gain", "params": {"gain_db": -6}},
    {"effect": "lowpass", "params": {"cutoff_frequency_hz": 12000}},
    {"effect": "limiter", "params": {"threshold_db": -3}},
]


def test_streamed_chain_equals_pedalboard_applied_directly(tmp_path: Path) -> None:
    seconds, tail = BLOCK_SECONDS * 1.5, 2.0  # crosses a block seam, then a tail
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    signal = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) * (t % 1 < 0.3), 0.1 * rng.standard_normal(t.size)])
    sf.write(tmp_path / "in.wav", signal.T.astype(np.float32), RATE, subtype="FLOAT")
    params = FxParams(chain=CHAIN, tail_s=tail)
    engine = load_engine("fx", TASKS["fx"].model_key(params), tmp_path)
    result = engine.run(tmp_path / "in.wav", params, tmp_path, no_progress)
    ours = sf.read(result.outputs[0].path, always_2d=True, dtype="float64")[0].T

    board = pedalboard.Pedalboard([getattr(pedalboard, FX_EFFECTS[e["effect"]][1])(**e["params"]) for e in CHAIN])
    padded = np.concatenate([signal, np.zeros((2, int(tail * RATE)))], axis=1).astype(np.float32)
    direct = np.clip(board(padded, RATE), -1, 1)

    assert ours.shape == direct.shape == (2, int((seconds + tail) * RATE))
    assert np.max(np.abs(direct[:, -int(tail * RATE) :])) > 1e-3  # the tail really rings out
    np.testing.assert_allclose(ours, direct, atol=1e-6)  # 24-bit output: quantisation 6e-8
    assert result.metrics["output_seconds"] == pytest.approx(seconds + tail)


def test_pitch_shift_streams_to_the_right_length_and_pitch(tmp_path: Path) -> None:
    t = np.arange(3 * RATE) / RATE
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), RATE, subtype="FLOAT")
    params = FxParams(chain=[{"effect": "pitch_shift", "params": {"semitones": 12}}], format="flac")
    result = FxEngine().run(tmp_path / "a.wav", params, tmp_path, no_progress)
    out, rate = sf.read(result.outputs[0].path)
    assert result.outputs[0].name == "processed.flac" and len(out) == len(t)

    def dominant_hz(x: np.ndarray) -> float:
        return float(np.fft.rfftfreq(RATE, 1 / RATE)[np.argmax(np.abs(np.fft.rfft(x[RATE : 2 * RATE])))])

    one_shot = pedalboard.PitchShift(semitones=12)(0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32), RATE)
    assert dominant_hz(out) == pytest.approx(dominant_hz(one_shot), abs=2)  # Rubber Band's 888 Hz, either way
    assert dominant_hz(out) == pytest.approx(880, rel=0.01)


def test_cutoff_above_nyquist_is_a_user_error(tmp_path: Path) -> None:
    sf.write(tmp_path / "low.wav", np.zeros(16000), 16000)
    params = FxParams(chain=[{"effect": "gain"}, {"effect": "lowpass", "params": {"cutoff_frequency_hz": 9000}}])
    with pytest.raises(EngineError, match=r"chain\[1\]\.params\.cutoff_frequency_hz") as caught:
        FxEngine().run(tmp_path / "low.wav", params, tmp_path, no_progress)
    assert caught.value.code == "invalid_params"


@pytest.mark.parametrize(
    ("chain", "loc"),
    [
        ([{"effect": "gain"}, {"effect": "gain"}, {"effect": "reverb", "params": {"room_size": 3}}],
         ("chain", 2, "reverb", "params", "room_size")),
        ([{"effect": "flanger"}], ("chain", 0)),
        ([{"effect": "delay", "params": {"delay_seconds": 0.1, "wet": 1}}], ("chain", 0, "delay", "params", "wet")),
        ([{"effect": "compressor", "params": {"ratio": 0.5}}], ("chain", 0, "compressor", "params", "ratio")),
        ([{"effect": "gain"}] * 17, ("chain",)),
        ([], ("chain",)),
    ],
)  # fmt: skip
def test_bad_effects_and_params_are_rejected_naming_the_entry(chain: list, loc: tuple) -> None:
    with pytest.raises(ValidationError) as caught:
        FxParams(chain=chain)
    assert caught.value.errors()[0]["loc"] == loc


def test_tail_is_bounded() -> None:
    with pytest.raises(ValidationError):
        FxParams(chain=[{"effect": "reverb"}], tail_s=31)
    schema = FxParams.model_json_schema()
    assert schema["properties"]["chain"]["maxItems"] == 16
    assert set(schema["properties"]["chain"]["items"]["discriminator"]["mapping"]) == set(FX_EFFECTS)
