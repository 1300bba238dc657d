"""The song engine (song, cover, repaint) on a tiny random AceStepPipeline saved with save_pretrained and loaded
through the registry, the path real weights take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from inference.base import EngineError
from inference.params import CoverParams, RepaintParams, SongParams
from inference.registry import load_engine
from inference.song import SongEngine
from inference.song_common import REPAINT_FADE_S
from tests.tiny_ace_step import ACE_STEP_RATE, build_ace_step

pytestmark = pytest.mark.engine

LYRICS = "[verse]\nhello world we sing tonight\n[chorus]\nla la la"
ONE_24_BIT_STEP = 2.0**-23


class Progress:
    def __init__(self) -> None:
        self.updates: list[tuple[float, str | None]] = []

    def __call__(self, fraction: float, stage: str | None = None) -> None:
        self.updates.append((fraction, stage))


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("song_weights")
    build_ace_step(root / "ace-step-1.5")
    return root


@pytest.fixture(scope="session")
def engine(weights_dir: Path) -> SongEngine:
    song = load_engine("song", "ace-step-1.5", weights_dir)
    assert isinstance(song, SongEngine)
    return song


@pytest.fixture(scope="session")
def input_song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s stereo 16-bit wav at the model's rate: decoding it gives back exactly these samples."""
    path = tmp_path_factory.mktemp("song_input") / "input.wav"
    t = np.arange(2 * ACE_STEP_RATE) / ACE_STEP_RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(1).standard_normal(t.size)
    sf.write(path, np.stack([left, 0.5 * left], axis=1), ACE_STEP_RATE, subtype="PCM_16")
    return path


def read(path: Path) -> np.ndarray:
    return sf.read(path, always_2d=True, dtype="float64")[0].T


def test_the_three_tasks_share_one_loaded_pipeline(engine: SongEngine, weights_dir: Path) -> None:
    assert load_engine("cover", "ace-step-1.5", weights_dir) is engine
    assert load_engine("repaint", "ace-step-1.5", weights_dir) is engine


def test_song_writes_variants_and_a_record_that_reproduces_them(engine: SongEngine, tmp_path: Path) -> None:
    progress = Progress()
    params = SongParams(prompt="upbeat synth pop", lyrics=LYRICS, duration_s=1.3, variants=2, steps=3, seed=7, bpm=120,
                        key="A minor", time_signature="4", vocal_language="en")  # fmt: skip
    result = engine.run(None, params, tmp_path / "a", progress)

    assert [o.name for o in result.outputs] == ["variant_1.wav", "variant_2.wav", "song.json"]
    first = [read(o.path) for o in result.outputs[:2]]
    for output in result.outputs[:2]:
        info = sf.info(output.path)
        assert (info.samplerate, info.channels, info.frames) == (ACE_STEP_RATE, 2, round(1.3 * ACE_STEP_RATE))
    assert not np.array_equal(first[0], first[1])  # one batch, each variant its own noise
    record = json.loads(result.outputs[2].path.read_text())
    assert record["task"] == "song" and record["seed"] == 7 and record["duration_s"] == pytest.approx(1.3)
    assert record["params"]["lyrics"] == LYRICS and record["outputs"] == ["variant_1.wav", "variant_2.wav"]
    assert result.metrics["output_seconds"] == pytest.approx(2.6)
    assert sum(stage == "denoising" for _, stage in progress.updates) == 3 and progress.updates[-1] == (1.0, None)

    again = engine.run(None, SongParams.model_validate(record["params"]), tmp_path / "b", Progress())
    assert all(np.array_equal(x, read(o.path)) for x, o in zip(first, again.outputs[:2], strict=True))


def test_song_without_seed_reports_one_and_other_lyrics_change_the_song(engine: SongEngine, tmp_path: Path) -> None:
    plain = engine.run(None, SongParams(prompt="pop", duration_s=1.0, steps=2), tmp_path / "a", Progress())
    seed = json.loads(plain.outputs[-1].path.read_text())["seed"]
    assert isinstance(seed, int) and plain.outputs[0].metadata["seed"] == seed
    sung = engine.run(None, SongParams(prompt="pop", duration_s=1.0, steps=2, seed=seed, lyrics=LYRICS),
                      tmp_path / "b", Progress())  # fmt: skip
    assert not np.array_equal(read(plain.outputs[0].path), read(sung.outputs[0].path))


def test_song_equals_the_pipeline_called_directly_with_the_same_seed(engine: SongEngine, tmp_path: Path) -> None:
    params = SongParams(prompt="calm piano", lyrics=LYRICS, duration_s=1.0, steps=3, seed=11, variants=2, format="flac")
    result = engine.run(None, params, tmp_path, Progress())

    torch.manual_seed(11)
    direct = engine.pipeline(
        prompt=["calm piano"] * 2, lyrics=[LYRICS] * 2, audio_duration=1.0, num_inference_steps=3,
        generator=torch.Generator().manual_seed(11), output_type="np", guidance_scale=1.0,
    ).audios  # fmt: skip
    for output, expected in zip(result.outputs[:2], direct, strict=True):
        assert output.name.endswith(".flac")
        # The engine's only change is the 24-bit encoding (and the cut to the exact length; none here).
        np.testing.assert_allclose(read(output.path), expected[:, :ACE_STEP_RATE], atol=ONE_24_BIT_STEP)


def test_cover_follows_the_input_length_and_strength_matters(
    engine: SongEngine, input_song: Path, tmp_path: Path
) -> None:
    params = CoverParams(prompt="heavy rock", lyrics=LYRICS, strength=1.0, seed=3, steps=2, variants=2)
    result = engine.run(input_song, params, tmp_path / "a", Progress())
    assert [o.name for o in result.outputs] == ["variant_1.wav", "variant_2.wav", "song.json"]
    assert sf.info(result.outputs[0].path).frames == 2 * ACE_STEP_RATE
    assert result.metrics["audio_seconds"] == pytest.approx(2.0)
    again = engine.run(input_song, params, tmp_path / "b", Progress())
    assert np.array_equal(read(result.outputs[0].path), read(again.outputs[0].path))
    looser = engine.run(input_song, params.model_copy(update={"strength": 0.3}), tmp_path / "c", Progress())
    assert not np.array_equal(read(result.outputs[0].path), read(looser.outputs[0].path))


def test_repaint_changes_only_the_span(engine: SongEngine, input_song: Path, tmp_path: Path) -> None:
    params = RepaintParams(start_s=0.5, end_s=1.25, lyrics="[verse]\nnew words", prompt="brighter", seed=5, steps=3)
    result = engine.run(input_song, params, tmp_path, Progress())

    assert [o.name for o in result.outputs] == ["repainted.wav", "song.json"]
    source, repainted = read(input_song), read(result.outputs[0].path)
    assert repainted.shape == source.shape
    start, end = round(0.5 * ACE_STEP_RATE), round(1.25 * ACE_STEP_RATE)
    outside = np.r_[0:start, end : source.shape[1]]
    # Outside the span: the input itself, to one 24-bit step (the input is 16-bit: exact in practice).
    assert np.max(np.abs(repainted[:, outside] - source[:, outside])) <= ONE_24_BIT_STEP
    fade = round(REPAINT_FADE_S * ACE_STEP_RATE)
    inside = repainted[:, start + fade : end - fade] - source[:, start + fade : end - fade]
    assert np.mean(np.abs(inside)) > 0.01  # the span was regenerated
    assert json.loads(result.outputs[1].path.read_text())["params"]["start_s"] == 0.5


def test_the_pipeline_alone_changes_audio_outside_the_span(engine: SongEngine, input_song: Path) -> None:
    """Why the engine splices: AceStepPipeline's repaint regenerates and re-normalises the whole waveform."""
    source = read(input_song).astype(np.float32)
    direct = engine.pipeline(
        prompt="brighter", lyrics="", task_type="repaint", src_audio=torch.from_numpy(source), repainting_start=0.5,
        repainting_end=1.25, num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="np",
        guidance_scale=1.0,
    ).audios[0][:, : source.shape[1]]  # fmt: skip
    before = source[:, : round(0.5 * ACE_STEP_RATE)]
    assert np.max(np.abs(direct[:, : before.shape[1]] - before)) > 0.01


def test_repaint_past_the_end_of_the_input_is_refused(engine: SongEngine, input_song: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError) as error:
        engine.run(input_song, RepaintParams(start_s=1.0, end_s=2.5, seed=1, steps=1), tmp_path, Progress())
    assert error.value.code == "span_outside_input"
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_missing_weights_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ace-step-1.5"):
        load_engine("song", "ace-step-1.5", tmp_path)
