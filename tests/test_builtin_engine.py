"""The builtin engine: the real engines' output names and shapes, from DSP whose results we can check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference import audio
from inference.base import EngineError
from inference.builtin import HOLD_UNTIL_ENV, BuiltinEngine, build_engine, builtin_engine
from inference.params import (
    CoverParams,
    EnhanceParams,
    FxParams,
    GenerateParams,
    MasterParams,
    MidiParams,
    RepaintParams,
    SeparateParams,
    SongParams,
    TranscribeParams,
    TuneParams,
)

RATE = 44100


def _tone(freq: float, seconds: float, amp: float = 0.3, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: Path, mono: np.ndarray, rate: int = RATE, channels: int = 2) -> Path:
    sf.write(str(path), np.stack([mono] * channels).T, rate, subtype="FLOAT")
    return path


class _Progress:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, fraction: float, stage: str | None = None) -> None:
        self.calls.append(fraction)

    def check(self) -> None:
        assert len(self.calls) >= 2 and self.calls[-1] == 1.0
        assert all(0.0 <= a <= b <= 1.0 for a, b in zip(self.calls, self.calls[1:], strict=False))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def test_separate_writes_one_file_per_stem_and_the_bands_sum_to_the_input(tmp_path):
    mix = _tone(60, 12.0) + _tone(1000, 12.0) + _tone(12000, 12.0)  # longer than one 10 s block: crosses a seam
    source = _write(tmp_path / "mix.wav", mix)
    progress = _Progress()
    result = build_engine("demucs/htdemucs", tmp_path).run(
        source, SeparateParams(model="htdemucs"), tmp_path / "out", progress
    )
    progress.check()
    assert [o.name for o in result.outputs] == ["drums.wav", "bass.wav", "other.wav", "vocals.wav"]
    assert {o.content_type for o in result.outputs} == {"audio/wav"}
    stems = {o.metadata["stem"]: audio.decode(o.path) for o in result.outputs}
    assert all(s.shape == (2, mix.size) for s in stems.values())
    total = sum(stems.values())
    assert _rms(total[:, 2000:-2000] - mix[2000:-2000]) < 1e-3 * _rms(mix)
    # The 60 Hz tone lands in bass, the 12 kHz tone in drums (the top band).
    assert _rms(stems["bass"]) == pytest.approx(_rms(_tone(60, 1.0)), rel=0.05)
    assert _rms(stems["drums"]) == pytest.approx(_rms(_tone(12000, 1.0)), rel=0.05)
    assert result.metrics["audio_seconds"] == pytest.approx(12.0, abs=0.01)


def test_separate_two_stems_and_six_sources(tmp_path):
    source = _write(tmp_path / "mix.wav", _tone(1000, 2.0) + _tone(60, 2.0))
    engine = builtin_engine("separate")
    two = engine.run(
        source, SeparateParams(model="htdemucs", two_stems="vocals", format="flac"), tmp_path / "two", _Progress()
    )
    assert [o.name for o in two.outputs] == ["vocals.flac", "no_vocals.flac"]
    vocals, rest = (audio.decode(o.path) for o in two.outputs)
    assert _rms(vocals) == pytest.approx(_rms(_tone(1000, 1.0)), rel=0.05)
    assert _rms(rest) == pytest.approx(_rms(_tone(60, 1.0)), rel=0.05)
    six = engine.run(source, SeparateParams(model="htdemucs_6s", format="mp3"), tmp_path / "six", _Progress())
    assert sorted(o.name for o in six.outputs) == sorted(
        f"{s}.mp3" for s in ("drums", "bass", "other", "vocals", "guitar", "piano")
    )
    assert {o.content_type for o in six.outputs} == {"audio/mpeg"}


def test_enhance_gates_quiet_frames_within_the_attenuation_limit(tmp_path):
    rng = np.random.default_rng(0)
    speech = np.concatenate([_tone(300, 1.0), np.zeros(RATE, np.float32), _tone(300, 1.0)])
    noisy = speech + 0.001 * rng.standard_normal(speech.size).astype(np.float32)  # -60 dBFS hiss
    source = _write(tmp_path / "noisy.wav", noisy, channels=1)
    gap = slice(int(1.2 * 48000), int(1.8 * 48000))
    unlimited = build_engine("deepfilternet3", tmp_path).run(source, EnhanceParams(), tmp_path / "a", _Progress())
    (out,) = unlimited.outputs
    assert out.name == "enhanced.wav" and out.content_type == "audio/wav"
    assert audio.probe(out.path).sample_rate == 48000
    clean = audio.decode(out.path)
    assert _rms(clean[:, gap]) < 1e-5
    assert _rms(clean[:, 12000:36000]) == pytest.approx(_rms(_tone(300, 1.0)), rel=0.05)
    limited = builtin_engine("enhance").run(source, EnhanceParams(atten_lim_db=6), tmp_path / "b", _Progress())
    level = _rms(audio.decode(limited.outputs[0].path)[:, gap])
    assert level == pytest.approx(0.001 * 10 ** (-6 / 20), rel=0.2)


def test_transcribe_writes_a_segment_per_sound(tmp_path):
    silence = np.zeros(RATE, np.float32)
    signal = np.concatenate([silence, _tone(200, 1.5), silence, silence, _tone(200, 0.5), silence])
    source = _write(tmp_path / "talk.wav", signal, channels=1)
    progress = _Progress()
    params = TranscribeParams(model="tiny", language="de", word_timestamps=True)
    result = build_engine("whisper/tiny", tmp_path).run(source, params, tmp_path / "out", progress)
    progress.check()
    by_name = {o.name: o for o in result.outputs}
    assert set(by_name) == {"transcript.json", "transcript.txt", "transcript.srt", "transcript.vtt"}
    assert by_name["transcript.vtt"].content_type == "text/vtt"
    document = json.loads(by_name["transcript.json"].path.read_text())
    assert document["language"] == "de" and document["duration"] == pytest.approx(6.0, abs=0.01)
    starts_ends = [(s["start"], s["end"]) for s in document["segments"]]
    assert starts_ends == [pytest.approx((1.0, 2.5), abs=0.03), pytest.approx((4.5, 5.0), abs=0.03)]
    assert document["segments"][0]["words"][0]["word"] == "[speech]"
    srt = by_name["transcript.srt"].path.read_text()
    assert srt.startswith("1\n00:00:01,000 --> 00:00:02,500\n[speech]\n\n2\n")
    assert by_name["transcript.vtt"].path.read_text().startswith("WEBVTT\n\n00:00:01.000 --> ")


def test_midi_finds_the_pitches_and_writes_a_midi_file(tmp_path):
    a4, c5 = _tone(440.0, 0.5), _tone(523.25, 0.5)
    source = _write(tmp_path / "melody.wav", np.concatenate([a4, np.zeros(RATE // 4, np.float32), c5]), channels=1)
    result = build_engine("basic-pitch", tmp_path).run(source, MidiParams(), tmp_path / "out", _Progress())
    mid, notes_json = result.outputs
    assert (mid.name, mid.content_type, notes_json.name) == ("notes.mid", "audio/midi", "notes.json")
    notes = json.loads(notes_json.path.read_text())
    assert [n["pitch"] for n in notes] == [69, 72]
    assert notes[0]["start_s"] == pytest.approx(0.0, abs=0.06) and notes[0]["end_s"] == pytest.approx(0.5, abs=0.06)
    assert set(notes[0]) == {"start_s", "end_s", "pitch", "velocity", "amplitude", "pitch_bends"}
    data = mid.path.read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    assert data.count(bytes([0x90, 69])) == 1 and data.count(bytes([0x80, 72])) == 1
    pretty_midi = pytest.importorskip("pretty_midi")
    parsed = pretty_midi.PrettyMIDI(str(mid.path))
    assert [(n.pitch, round(n.start, 2)) for n in parsed.instruments[0].notes] == [
        (69, round(notes[0]["start_s"], 2)),
        (72, round(notes[1]["start_s"], 2)),
    ]


def test_generate_is_seeded_and_exactly_as_long_as_asked(tmp_path):
    engine = build_engine("stable-audio-open", tmp_path)
    params = GenerateParams(prompt="rain on a tin roof", duration_s=1.5, variants=2, seed=7)
    progress = _Progress()
    first = engine.run(None, params, tmp_path / "a", progress)
    progress.check()
    assert [o.name for o in first.outputs] == ["variant_1.wav", "variant_2.wav"]
    assert first.metrics["output_seconds"] == pytest.approx(3.0)
    one, two = (sf.read(str(o.path))[0] for o in first.outputs)
    assert one.shape == (round(1.5 * 44100), 2) and not np.allclose(one, two)
    again = engine.run(None, params, tmp_path / "b", _Progress())
    np.testing.assert_array_equal(sf.read(str(again.outputs[0].path))[0], one)
    other_seed = engine.run(None, params.model_copy(update={"seed": 8}), tmp_path / "c", _Progress())
    assert not np.allclose(sf.read(str(other_seed.outputs[0].path))[0], one)


def test_song_cover_and_repaint_have_the_real_outputs_and_repaint_keeps_the_rest(tmp_path):
    engine = build_engine("ace-step-1.5", tmp_path)
    song = engine.run(None, SongParams(prompt="pop", duration_s=2.0, variants=2, seed=3), tmp_path / "a", _Progress())
    assert [o.name for o in song.outputs] == ["variant_1.wav", "variant_2.wav", "song.json"]
    assert sf.info(str(song.outputs[0].path)).frames == 2 * 48000
    record = json.loads(song.outputs[2].path.read_text())
    assert record["task"] == "song" and record["seed"] == 3 and record["params"]["variants"] == 2
    source_path = song.outputs[0].path
    cover = engine.run(source_path, CoverParams(prompt="rock", variants=1), tmp_path / "b", _Progress())
    assert [o.name for o in cover.outputs] == ["variant_1.wav", "song.json"]
    repaint = engine.run(source_path, RepaintParams(start_s=0.5, end_s=1.0, format="flac"), tmp_path / "c", _Progress())
    assert [o.name for o in repaint.outputs] == ["repainted.flac", "song.json"]
    source = audio.decode(source_path, mono=True)[0]  # the builtin engine reads its input as mono
    repainted = sf.read(str(repaint.outputs[0].path), always_2d=True)[0][:, 0]
    assert np.max(np.abs(repainted[:24000] - source[:24000])) <= 2.0**-23
    assert not np.allclose(repainted[25000:47000], source[25000:47000])
    with pytest.raises(EngineError) as past_the_end:
        engine.run(source_path, RepaintParams(start_s=1.0, end_s=3.0), tmp_path / "d", _Progress())
    assert past_the_end.value.code == "span_outside_input"


def test_task_pinning_and_input_errors(tmp_path):
    with pytest.raises(TypeError):
        builtin_engine("midi").run(None, GenerateParams(prompt="x"), tmp_path, _Progress())
    with pytest.raises(KeyError):
        builtin_engine("dance")
    with pytest.raises(EngineError) as missing:
        BuiltinEngine().run(None, MidiParams(), tmp_path, _Progress())
    assert missing.value.code == "missing_input"
    garbage = tmp_path / "junk.wav"
    garbage.write_bytes(b"RIFF0000WAVEjunk" * 100)
    with pytest.raises(EngineError) as bad:
        BuiltinEngine().run(garbage, SeparateParams(model="htdemucs"), tmp_path / "out", _Progress())
    assert bad.value.code == "undecodable_audio"


def test_hold_until_env_repeats_the_first_report_until_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook that keeps a job running for the jobs API's cancel test: with HOLD_UNTIL_ENV naming a missing file,
    a run repeats its first progress report until the file exists (here the third report creates it), and a
    report that raises (a cancel) ends the run."""
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(release))
    params = GenerateParams(prompt="hum", duration_s=0.2, variants=2)
    calls: list[float] = []

    def progress(fraction: float, stage: str | None = None) -> None:
        calls.append(fraction)
        if len(calls) == 3:
            release.touch()

    result = BuiltinEngine().run(None, params, tmp_path / "out", progress)
    assert calls == [0.5, 0.5, 0.5, 0.5, 1.0] and len(result.outputs) == 2

    release.unlink()

    def cancel(fraction: float, stage: str | None = None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        BuiltinEngine().run(None, params, tmp_path / "canceled", cancel)
    assert not (tmp_path / "canceled" / "variant_2.wav").exists()


def test_master_builtin_gains_to_the_target_and_writes_the_report(tmp_path):
    quiet = 0.02 * np.sin(2 * np.pi * 220 * np.arange(3 * RATE) / RATE)
    source = _write(tmp_path / "quiet.wav", quiet.astype(np.float32))
    result = builtin_engine("master").run(source, MasterParams(target_lufs=-16), tmp_path / "m", _Progress())
    assert [o.name for o in result.outputs] == ["mastered.wav", "report.json"]
    report = json.loads(result.outputs[1].path.read_text())
    # A steady stereo sine: unweighted loudness = -0.691 + 10 log10(2 channels x A^2 / 2).
    assert report["input"]["integrated_lufs"] == pytest.approx(-0.691 + 10 * np.log10(0.02**2), abs=0.05)
    assert abs(report["loudness_error_lu"]) < 0.1
    assert report["output"]["true_peak_dbtp"] <= -1.0
    with pytest.raises(EngineError) as caught:
        builtin_engine("master").run(_write(tmp_path / "s.wav", np.zeros(RATE, np.float32)), MasterParams(),
                                     tmp_path / "s", _Progress())  # fmt: skip
    assert caught.value.code == "silent_audio"


def test_tune_builtin_analyses_pitch_and_passes_audio_through(tmp_path):
    sharp = _tone(220 * 2 ** (40 / 1200), 1.0)
    source = _write(tmp_path / "sharp.wav", sharp, channels=1)
    result = builtin_engine("tune").run(source, TuneParams(), tmp_path / "t", _Progress())
    assert [o.name for o in result.outputs] == ["tuned.wav", "pitch.json"]
    pitch = json.loads(result.outputs[1].path.read_text())
    assert pitch["summary"]["mad_cents_before"] == pytest.approx(40, abs=8)
    assert len(pitch["times_s"]) == len(pitch["f0_before_hz"]) == len(pitch["voiced"])
    np.testing.assert_allclose(audio.decode(result.outputs[0].path)[0], sharp, atol=1e-6)


def test_fx_builtin_applies_gain_and_the_tail(tmp_path):
    source = _write(tmp_path / "a.wav", _tone(440, 1.0))
    params = FxParams(chain=[{"effect": "gain", "params": {"gain_db": -6}}, {"effect": "reverb"}], tail_s=0.5)
    result = builtin_engine("fx").run(source, params, tmp_path / "f", _Progress())
    (out,) = result.outputs
    assert out.name == "processed.wav" and out.metadata["skipped"] == ["reverb"]
    processed = audio.decode(out.path)
    assert processed.shape == (2, int(1.5 * RATE))
    assert _rms(processed[:, :RATE]) == pytest.approx(_rms(_tone(440, 1.0)) * 10 ** (-6 / 20), rel=1e-3)
