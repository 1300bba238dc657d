"""The separate engine on a tiny random HTDemucs saved as a local demucs repo, loaded the way real weights are."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs

from inference.base import EngineError, partial_outputs
from inference.params import SeparateParams
from inference.separate import SeparateEngine, build_engine
from tests.tiny_demucs import build_tiny_demucs, save_demucs, tiny_htdemucs

pytestmark = pytest.mark.engine
RATE = 44100


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    build_tiny_demucs(root)
    bag = root / "demucs" / "htdemucs_ft"
    bag.mkdir(parents=True)
    for index, sig in enumerate(["0000aaaa", "1111bbbb"]):
        save_demucs(tiny_htdemucs(index + 1), bag, sig)
    weights_per_model = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    (bag / "htdemucs_ft.yaml").write_text(
        yaml.safe_dump({"models": ["0000aaaa", "1111bbbb"], "weights": weights_per_model})
    )
    return root


@pytest.fixture(scope="session")
def engine(weights):
    return build_engine("demucs/htdemucs", weights, device="cpu")


def _write_input(path: Path, seconds: float, rate: int = RATE, channels: int = 2) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    left = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.02 * rng.standard_normal(t.size)
    data = np.stack([left, right][:channels], axis=1).astype(np.float32)
    sf.write(str(path), data, rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="session")
def song(tmp_path_factory) -> Path:
    return _write_input(tmp_path_factory.mktemp("input") / "song.wav", 3.0)


def _read(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE
    return data.T


def test_checksum_is_verified_on_load(weights, tmp_path):
    repo = tmp_path / "demucs" / "htdemucs"
    repo.mkdir(parents=True)
    source = next((weights / "demucs" / "htdemucs").glob("*.th"))
    corrupted = bytearray(source.read_bytes())
    corrupted[-1] ^= 0xFF
    (repo / source.name).write_bytes(bytes(corrupted))
    (repo / "htdemucs.yaml").write_text((weights / "demucs" / "htdemucs" / "htdemucs.yaml").read_text())
    with pytest.raises(RuntimeError, match="checksum"):
        build_engine("demucs/htdemucs", tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError):
        build_engine("demucs/htdemucs_6s", tmp_path, device="cpu")


def test_all_stems_match_demucs_apply_model(engine, song, tmp_path):
    """One window (chunk longer than the track): the files equal demucs's own normalise/apply/denormalise."""
    events: list[float] = []
    emitted: list[tuple[Any, int]] = []  # each stem as announced, with its size then: complete before the run ends
    with partial_outputs(lambda output: emitted.append((output, output.path.stat().st_size))):
        result = engine.run(
            song, SeparateParams(model="htdemucs", shifts=0), tmp_path, lambda fraction, stage: events.append(fraction)
        )
    assert [output for output, _ in emitted] == result.outputs
    assert [size for _, size in emitted] == [output.path.stat().st_size for output in result.outputs]

    assert [o.name for o in result.outputs] == ["drums.wav", "bass.wav", "other.wav", "vocals.wav"]
    assert result.metrics["audio_seconds"] == pytest.approx(3.0)
    assert events[0] == 0.0 and events[-1] == 1.0 and events == sorted(events) and len(events) > 3

    mix = torch.from_numpy(_read(song))
    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8
    with torch.inference_mode():
        expected = apply_model(engine.model, ((mix - mean) / std)[None], shifts=0, split=True, overlap=0.25)[0]
    expected = (expected * std + mean).clamp(-1, 1).numpy()
    for index, output in enumerate(result.outputs):
        assert output.content_type == "audio/wav" and output.metadata["stem"] == output.name.removesuffix(".wav")
        np.testing.assert_allclose(_read(output.path), expected[index], atol=1e-5)


def test_two_stems_is_the_stem_and_the_sum_of_the_others(engine, song, tmp_path):
    full = engine.run(song, SeparateParams(model="htdemucs", shifts=0), tmp_path / "full", lambda f, s: None)
    pair = engine.run(
        song, SeparateParams(model="htdemucs", shifts=0, two_stems="vocals"), tmp_path / "pair", lambda f, s: None
    )
    stems = {o.name: _read(o.path) for o in full.outputs}

    assert [o.name for o in pair.outputs] == ["vocals.wav", "no_vocals.wav"]
    np.testing.assert_allclose(_read(pair.outputs[0].path), stems["vocals.wav"], atol=1e-6)
    others = stems["drums.wav"] + stems["bass.wav"] + stems["other.wav"]
    np.testing.assert_allclose(_read(pair.outputs[1].path), np.clip(others, -1, 1), atol=1e-5)


def test_long_input_runs_in_crossfaded_windows(engine, weights, tmp_path):
    """6 s in two windows (3 s + 0.5 s cross-fade, on the model's 1.5 s segment grid): away from the join the stems
    equal the single-window run exactly; the join itself is a blend; lengths and progress stay right."""
    song = _write_input(tmp_path / "six.wav", 6.0)
    whole = engine.run(
        song,
        SeparateParams(model="htdemucs", stems=["vocals", "drums"], shifts=0),
        tmp_path / "whole",
        lambda f, s: None,
    )
    windowed = build_engine("demucs/htdemucs", weights, device="cpu", chunk_seconds=3.0, crossfade_seconds=0.5)
    events: list[float] = []
    result = windowed.run(
        song,
        SeparateParams(model="htdemucs", stems=["vocals", "drums"], shifts=0),
        tmp_path / "windowed",
        lambda fraction, stage: events.append(fraction),
    )

    assert [o.name for o in result.outputs] == ["vocals.wav", "drums.wav"]
    # Window 1 is exact from 3.5 s (join end) on; window 0 up to 3.5 s - 2 s segment = 1.5 s.
    exact = np.r_[0 : int(1.5 * RATE), int(3.5 * RATE) : 6 * RATE]
    for mine, reference in zip(result.outputs, whole.outputs, strict=True):
        data, expected = _read(mine.path), _read(reference.path)
        assert data.shape == expected.shape == (2, 6 * RATE)
        np.testing.assert_allclose(data[:, exact], expected[:, exact], atol=1e-6)
    assert events[0] == 0.0 and events[-1] == 1.0 and events == sorted(events)

    # The join, computed here from its definition: each window through demucs's own apply_model (normalised by the
    # whole track's statistics, as demucs.api does), then a linear fade from window 0 to window 1 over 3.0-3.5 s.
    mix = torch.from_numpy(_read(song))
    reference = mix.mean(0)
    mean, std = reference.mean(), reference.std() + 1e-8

    def window(start: int, end: int) -> np.ndarray:
        with torch.inference_mode():
            normalised = ((mix[:, start:end] - mean) / std)[None]
            return (apply_model(engine.model, normalised, shifts=0, split=True, overlap=0.25)[0] * std + mean).numpy()

    join, fade = 3 * RATE, RATE // 2
    first, second = window(0, join + fade)[..., join:], window(join, 6 * RATE)[..., :fade]
    weight = np.linspace(0.0, 1.0, fade)  # the engine's own sampling of the ramp may differ by a sample's step
    blend = first * (1 - weight) + second * weight
    for mine in result.outputs:
        source = engine.sources.index(mine.name.removesuffix(".wav"))
        joined = _read(mine.path)[:, join : join + fade]
        assert np.abs(first[source] - second[source]).max() > 0.01  # the windows disagree here: a blend shows
        np.testing.assert_allclose(joined, blend[source], rtol=0, atol=1e-4)


def _record_batches(engine: SeparateEngine) -> tuple[list[int], Callable[[], None]]:
    """Hook every HTDemucs in the engine's model: the batch size of each forward, and a function to unhook."""
    seen: list[int] = []
    handles = [
        module.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
        for module in engine.model.modules()
        if isinstance(module, HTDemucs)
    ]
    assert handles
    return seen, lambda: [handle.remove() for handle in handles]


# 8.5 s in 1.5 s chunks (the tiny model's segment stride) + 0.5 s cross-fades: windows start at 0, 1.5, ... 7.5 s;
# the first five are 2 s long and the last is 1 s, so batch_windows=3 runs batches of 3, 2 and 1 windows.
WINDOWED = {"chunk_seconds": 1.5, "crossfade_seconds": 0.5}


@pytest.fixture(scope="session")
def long_song(tmp_path_factory) -> Path:
    return _write_input(tmp_path_factory.mktemp("input") / "long.wav", 8.5)


def test_batched_windows_equal_unbatched(weights, long_song, tmp_path):
    """batch_windows=3 gives the batch_windows=1 stems to 1e-6 (float32 noise; eval HTDemucs is per-item)."""
    params = SeparateParams(model="htdemucs", shifts=0)
    single = build_engine("demucs/htdemucs", weights, device="cpu", batch_windows=1, **WINDOWED)
    batched = build_engine("demucs/htdemucs", weights, device="cpu", batch_windows=3, **WINDOWED)
    assert single.batch_windows == 1 and batched.batch_windows == 3
    events: list[float] = []
    one = single.run(long_song, params, tmp_path / "one", lambda f, s: None)
    three = batched.run(long_song, params, tmp_path / "three", lambda fraction, stage: events.append(fraction))

    for mine, reference in zip(three.outputs, one.outputs, strict=True):
        data, expected = _read(mine.path), _read(reference.path)
        assert data.shape == expected.shape == (2, int(8.5 * RATE))
        np.testing.assert_allclose(data, expected, rtol=0, atol=1e-6)
    assert events[0] == 0.0 and events[-1] == 1.0 and events == sorted(events)
    assert all(0.0 <= fraction <= 0.99 for fraction in events[1:-1]) and len(events) > 4


def test_model_sees_batched_windows(weights, long_song, tmp_path):
    batched = build_engine("demucs/htdemucs", weights, device="cpu", batch_windows=3, **WINDOWED)
    seen, unhook = _record_batches(batched)
    try:
        batched.run(long_song, SeparateParams(model="htdemucs", stems=["bass"], shifts=0), tmp_path, lambda f, s: None)
    finally:
        unhook()
    # Batches of 3 and 2 full windows, then the short last window alone (two segments per full window).
    assert max(seen) == 3 and seen[-1] == 1
    assert seen == [3, 3, 2, 2, 1]


def test_cancelling_stops_a_batch(weights, long_song, tmp_path):
    """Cancellation (a raise from the progress callback) stops the work at the first segment of the first batch."""
    batched = build_engine("demucs/htdemucs", weights, device="cpu", batch_windows=3, **WINDOWED)
    seen, unhook = _record_batches(batched)

    def cancel(fraction: float, stage: str) -> None:
        if stage == "separating":
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            batched.run(long_song, SeparateParams(model="htdemucs", shifts=0), tmp_path, cancel)
    finally:
        unhook()
    assert seen == [3]


def _live_storages() -> dict[int, int]:
    """Every storage a live tensor holds (data_ptr -> bytes): a slice or view keeps its whole base storage alive,
    which a weakref to the base tensor does not show."""
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":  # type(): no __class__ lookups
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return storages


def test_one_batch_of_stems_at_a_time(weights, long_song, tmp_path, monkeypatch):
    """When apply_model starts a batch, the only tensor memory alive besides the model is the decoded input, this
    batch's windows and the cross-fade (tail and ramp): no earlier batch's stems, not even through a slice.

    Host memory outside torch too: tracemalloc sees NumPy's buffers (NumPy reports them to it; torch's allocator
    does not), so stems kept as NumPy copies, in the run or in a module-level list, grow the traced memory from one
    batch to the next and stay traced after the run."""
    batched = build_engine("demucs/htdemucs", weights, device="cpu", batch_windows=3, **WINDOWED)
    apply = batched._apply
    before = _live_storages()  # the model's weights and whatever else this process holds already
    samples = int(8.5 * RATE)
    mix_bytes = 2 * samples * 4
    fade_bytes = (len(batched.sources) * 2 + 1) * batched.crossfade * 4  # the tail's stems and the ramp
    extra_at_batch: list[int] = []
    stem_bytes: list[int] = []

    traced_at_batch: list[int] = []

    def checked(windows: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        gc.collect()
        traced_at_batch.append(tracemalloc.get_traced_memory()[0])
        live = _live_storages()
        extra_at_batch.append(sum(size for ptr, size in live.items() if ptr not in before))
        allowed = mix_bytes + windows.untyped_storage().nbytes() + (fade_bytes if stem_bytes else 0)
        assert extra_at_batch[-1] <= allowed + 64 * 1024, (extra_at_batch, allowed, stem_bytes)
        estimates = apply(windows, *args, **kwargs)
        stem_bytes.append(estimates.untyped_storage().nbytes())
        return estimates

    monkeypatch.setattr(batched, "_apply", checked)
    tracemalloc.start()
    try:
        batched.run(long_song, SeparateParams(model="htdemucs", shifts=0), tmp_path, lambda f, s: None)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(stem_bytes) == 3
    # A batch's stems (several MB) dwarf the allowance's 64 kB of slack: one kept alive could not fit.
    assert min(stem_bytes) > 10 * 64 * 1024
    # Host memory: flat from batch to batch (measured: within a few kB), and nothing of the run kept after it.
    growth = [traced - traced_at_batch[0] for traced in traced_at_batch]
    assert max(growth) <= 256 * 1024, (growth, stem_bytes)
    assert retained <= 256 * 1024, retained


def test_batch_windows_default_and_validation(engine, weights):
    assert engine.batch_windows == 1  # CPU: batching would only cost memory
    assert SeparateEngine("htdemucs", engine.model, torch.device("cuda"), 60.0, 2.0).batch_windows == 4
    with pytest.raises(ValueError, match="batch_windows"):
        build_engine("demucs/htdemucs", weights, device="cpu", batch_windows=0)


def test_mono_48k_input_and_compressed_formats(engine, tmp_path):
    song = _write_input(tmp_path / "mono.wav", 1.5, rate=48000, channels=1)
    flac = engine.run(
        song, SeparateParams(model="htdemucs", stems=["bass"], format="flac"), tmp_path / "flac", lambda f, s: None
    )
    mp3 = engine.run(
        song, SeparateParams(model="htdemucs", stems=["bass"], format="mp3"), tmp_path / "mp3", lambda f, s: None
    )

    info = sf.info(str(flac.outputs[0].path))
    assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", RATE, 2, int(1.5 * RATE))
    assert flac.outputs[0].content_type == "audio/flac" and flac.outputs[0].name == "bass.flac"
    info = sf.info(str(mp3.outputs[0].path))
    assert (info.format, info.samplerate, info.channels) == ("MP3", RATE, 2)
    assert info.duration == pytest.approx(1.5, abs=0.1)
    assert mp3.outputs[0].content_type == "audio/mpeg"


def test_bag_of_models(weights, song, tmp_path):
    bag = build_engine("demucs/htdemucs_ft", weights, device="cpu")
    events: list[float] = []
    result = bag.run(
        song,
        SeparateParams(model="htdemucs_ft", stems=["other"], shifts=0),
        tmp_path,
        lambda fraction, stage: events.append(fraction),
    )
    assert _read(result.outputs[0].path).shape == (2, 3 * RATE)
    assert events == sorted(events) and events[-1] == 1.0
    with pytest.raises(ValueError, match="htdemucs_ft"):
        bag.run(song, SeparateParams(model="htdemucs"), tmp_path, lambda f, s: None)


def test_bad_input_raises_engine_error(engine, tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(EngineError) as caught:
        engine.run(junk, SeparateParams(model="htdemucs"), tmp_path / "out", lambda f, s: None)
    assert caught.value.code == "undecodable_audio"

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2), np.float32), RATE)
    with pytest.raises(EngineError):
        engine.run(empty, SeparateParams(model="htdemucs"), tmp_path / "out", lambda f, s: None)
