"""The generate engine on tiny random diffusers pipelines saved to disk and loaded through build_engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference.base import EngineError
from inference.generate import GenerateEngine, build_engine
from inference.params import GenerateParams
from inference.registry import load_engine
from tests.tiny_diffusers import (
    AUDIOLDM2_RATE,
    STABLE_AUDIO_MAX_SECONDS,
    STABLE_AUDIO_RATE,
    build_audioldm2,
    build_stable_audio,
)

pytestmark = pytest.mark.engine

PROMPT = "a dog barking in the distance"


class Progress:
    def __init__(self) -> None:
        self.updates: list[tuple[float, str | None]] = []

    def __call__(self, fraction: float, stage: str | None = None) -> None:
        self.updates.append((fraction, stage))


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generate_weights")
    build_stable_audio(root / "stable-audio-open")
    build_audioldm2(root / "audioldm2")
    return root


@pytest.fixture(scope="session")
def stable_audio(weights_dir: Path) -> GenerateEngine:
    engine = load_engine("generate", "stable-audio-open", weights_dir)
    assert isinstance(engine, GenerateEngine)
    return engine


@pytest.fixture(scope="session")
def audioldm2(weights_dir: Path) -> GenerateEngine:
    return build_engine("audioldm2", weights_dir)


def generate(engine: GenerateEngine, out_dir: Path, **fields: object) -> tuple[list[np.ndarray], list[dict]]:
    fields = {"model": engine.model_key, "prompt": PROMPT, "duration_s": 0.3, "steps": 3, **fields}
    result = engine.run(None, GenerateParams(**fields), out_dir, Progress())
    return [sf.read(output.path, always_2d=True)[0] for output in result.outputs], [o.metadata for o in result.outputs]


def test_stable_audio_writes_each_variant_at_the_exact_duration(stable_audio: GenerateEngine, tmp_path: Path):
    progress = Progress()
    params = GenerateParams(prompt=PROMPT, duration_s=0.2346, steps=4, variants=3, seed=11, guidance_scale=5.0)
    result = stable_audio.run(None, params, tmp_path, progress)

    assert [o.name for o in result.outputs] == ["variant_1.wav", "variant_2.wav", "variant_3.wav"]
    assert result.metrics["output_seconds"] == pytest.approx(3 * 0.2346)
    for output in result.outputs:
        assert output.path.parent == tmp_path and output.content_type == "audio/wav"
        info = sf.info(output.path)
        assert (info.samplerate, info.channels, info.frames) == (
            STABLE_AUDIO_RATE,
            2,
            round(0.2346 * STABLE_AUDIO_RATE),
        )
        assert output.metadata["seed"] == 11
    audio = [sf.read(o.path)[0] for o in result.outputs]
    assert not np.array_equal(audio[0], audio[1])  # one batch, but each variant has its own noise
    # The pipeline cuts at int(0.2346 * rate) = 234 samples; the engine pads to the rounded 235.
    assert all(np.abs(a).max() > 0 for a in audio)

    fractions = [fraction for fraction, _ in progress.updates]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert sum(stage == "denoising" for _, stage in progress.updates) == 4


def test_stable_audio_same_seed_is_identical_and_another_seed_differs(stable_audio: GenerateEngine, tmp_path: Path):
    first, _ = generate(stable_audio, tmp_path / "a", seed=123, variants=2)
    again, _ = generate(stable_audio, tmp_path / "b", seed=123, variants=2)
    other, _ = generate(stable_audio, tmp_path / "c", seed=124, variants=2)

    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_stable_audio_without_seed_reports_one_that_reproduces(stable_audio: GenerateEngine, tmp_path: Path):
    audio, metadata = generate(stable_audio, tmp_path / "a")
    seed = metadata[0]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32

    replay, _ = generate(stable_audio, tmp_path / "b", seed=seed)
    assert np.array_equal(audio[0], replay[0])


def test_stable_audio_negative_prompt_steers_the_output(stable_audio: GenerateEngine, tmp_path: Path):
    plain, _ = generate(stable_audio, tmp_path / "a", seed=5)
    steered, _ = generate(stable_audio, tmp_path / "b", seed=5, negative_prompt="rain falling on a tin roof")
    assert not np.array_equal(plain[0], steered[0])


def test_stable_audio_rejects_durations_beyond_what_the_model_makes(stable_audio: GenerateEngine, tmp_path: Path):
    with pytest.raises(EngineError) as error:
        generate(stable_audio, tmp_path, duration_s=STABLE_AUDIO_MAX_SECONDS + 0.1)
    assert error.value.code == "duration_too_long"
    assert not list(tmp_path.iterdir())


def test_audioldm2_generates_mono_variants_reproducibly(audioldm2: GenerateEngine, tmp_path: Path):
    progress = Progress()
    params = GenerateParams(
        model="audioldm2", prompt=PROMPT, duration_s=0.25, steps=3, variants=2, seed=3, negative_prompt="birds singing"
    )
    result = audioldm2.run(None, params, tmp_path / "a", progress)
    again, _ = generate(audioldm2, tmp_path / "b", duration_s=0.25, variants=2, seed=3, negative_prompt="birds singing")

    assert [o.name for o in result.outputs] == ["variant_1.wav", "variant_2.wav"]
    for output in result.outputs:
        info = sf.info(output.path)
        assert (info.samplerate, info.channels, info.frames) == (AUDIOLDM2_RATE, 1, round(0.25 * AUDIOLDM2_RATE))
    first = [sf.read(o.path, always_2d=True)[0] for o in result.outputs]
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert progress.updates[-1] == (1.0, None)
    assert result.metrics["output_seconds"] == pytest.approx(0.5)


def test_audioldm2_makes_lengths_below_its_frame_grid(audioldm2: GenerateEngine, tmp_path: Path):
    audio, _ = generate(audioldm2, tmp_path, duration_s=0.001, seed=1)
    assert audio[0].shape == (round(0.001 * AUDIOLDM2_RATE), 1)


def test_missing_weights_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="stable-audio-open"):
        build_engine("stable-audio-open", tmp_path)
