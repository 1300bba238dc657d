"""The RoFormer separation engine on tiny random checkpoints in the published MSST format (tests/tiny_roformer.py),
installed through models.lock's loader. Checked against MSST's own model classes and its `demix`
(tests/msst_reference, verbatim): strict loading of the published parameter names, equal output, streaming."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from inference.base import EngineError, partial_outputs
from inference.models import DEFAULT_LOCK_PATH, load_lock
from inference.params import DEFAULT_SEPARATE_MODEL, ROFORMER_SOURCES, SeparateParams, separate_model_key
from inference.roformer_arch import mel_filter_bank
from inference.separate import build_engine as build_separate_engine
from inference.separate_roformer import RoformerEngine, build_engine, load_network, read_config
from tests.msst_reference.demix import demix
from tests.tiny_roformer import DATA, PUBLISHED, TINY_CHUNK, install_tiny, reference_model, tiny_config

KIM, VIPERX, FOUR_STEM = PUBLISHED
RATE = 44100


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict[str, bytes]]]:
    """All three tiny models pulled into one weights folder over HTTP, pinned in a lock of their own."""
    root = tmp_path_factory.mktemp("roformer")
    weights, lock = root / "weights", root / "models.lock"
    models = install_tiny(weights, lock, list(PUBLISHED))
    return weights, lock, models


def _engine(installed: tuple[Path, Path, Any], key: str, **options: Any) -> RoformerEngine:
    weights, lock, _ = installed
    return build_engine(key, weights, device="cpu", lock=load_lock(lock), **options)


def _music(seconds: float, seed: int = 0) -> torch.Tensor:
    """Stereo tones plus noise: a clip with structure in every band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 1) + 0.1 * rng.standard_normal(t.size)
    return torch.from_numpy(np.stack([left, right]).astype(np.float32))


class _Config(dict):  # type: ignore[type-arg]
    """Attribute access, as MSST's ConfigDict gives demix."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _msst_config(key: str, batch_size: int) -> _Config:
    raw = tiny_config(PUBLISHED[key])
    raw["inference"]["batch_size"] = batch_size
    return _Config({section: _Config(body) if isinstance(body, dict) else body for section, body in raw.items()})


def _ours(engine: RoformerEngine, mix: torch.Tensor) -> torch.Tensor:
    blocks = list(engine.separate(mix))
    assert [start for start, _ in blocks] == list(np.cumsum([0] + [b.shape[-1] for _, b in blocks[:-1]]))
    return torch.cat([block for _, block in blocks], dim=-1)


def test_published_configs_are_the_pinned_files() -> None:
    """tests/data/roformer holds MSST's configs byte for byte: the sha256 models.lock pins for each."""
    from inference.models import sha256_file

    lock = load_lock()
    for key in (KIM, VIPERX):
        (pin,) = [f for f in lock.get(key).files if f.path.endswith(".yaml")]
        assert sha256_file(DATA / PUBLISHED[key].config) == pin.sha256, key


@pytest.mark.parametrize("key", list(PUBLISHED))
def test_checkpoints_in_the_published_format_load_strictly(key: str, installed: Any) -> None:
    """A state_dict saved by MSST's own class (the code the released files come from) loads with strict=True, and a
    checkpoint with one renamed parameter does not."""
    weights, _, models = installed
    folder = weights / key
    checkpoint = folder / PUBLISHED[key].checkpoint
    config = read_config(folder / PUBLISHED[key].config)
    published_names = set(torch.load(checkpoint, weights_only=True))
    network = load_network(config, checkpoint)
    assert set(network.state_dict()) == published_names
    assert config.sources == ROFORMER_SOURCES[key.removeprefix("roformer/")]

    state = torch.load(checkpoint, weights_only=True)
    renamed = next(name for name in state if "final_norm" in name or "band_split" in name)
    state[renamed.replace("band_split", "band_splitter").replace("final_norm", "last_norm")] = state.pop(renamed)
    broken = folder.parent / f"{folder.name}-renamed.ckpt"
    torch.save(state, broken)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_network(config, broken)


@pytest.mark.parametrize("key", [KIM, VIPERX, FOUR_STEM])
def test_equal_to_msst_demix(key: str, installed: Any) -> None:
    """Our streamed overlap-add equals MSST's demix on the same checkpoint and clip (CPU, fp32), and each network
    equals MSST's own class on the same windows; batching windows changes nothing."""
    mix = _music(1.0)  # 7 windows with the reflect padding: both edges and several joins
    engine = _engine(installed, key, batch_windows=1)
    ours = _ours(engine, mix)
    reference_net = reference_model(PUBLISHED[key], tiny_config(PUBLISHED[key]))
    reference_net.load_state_dict(engine.model.state_dict())
    reference_net.eval()
    reference = demix(
        _msst_config(key, 1), reference_net, mix.numpy(), torch.device("cpu"), PUBLISHED[key].architecture
    )
    expected = torch.from_numpy(np.stack([reference[name] for name in engine.config.instruments]))
    assert ours.shape == expected.shape == (len(engine.config.instruments), 2, mix.shape[-1])
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-4), (ours - expected).abs().max()
    assert expected.abs().max() > 1e-2  # a real signal, not two zeros

    if key == KIM:
        batched = _ours(engine.configure(batch_windows=4), mix)
        assert torch.allclose(batched, ours, atol=1e-5, rtol=1e-4)


def test_memory_stays_bounded_by_streaming(installed: Any) -> None:
    """Blocks leave as soon as every window covering them has run: at most one batch of hops each, so what is held
    does not grow with the input's length."""
    engine = _engine(installed, VIPERX, batch_windows=2)
    step = TINY_CHUNK // engine.config.num_overlap
    mix = _music(2.0)
    blocks = [block.shape[-1] for _, block in engine.separate(mix)]
    windows = math.ceil((mix.shape[-1] + 2 * (TINY_CHUNK - step)) / step)
    assert len(blocks) >= windows // 2 - 1  # one block per batch of two windows
    assert max(blocks) <= 2 * step
    assert sum(blocks) == mix.shape[-1]


def test_run_writes_vocals_and_the_instrumental(installed: Any, tmp_path: Path) -> None:
    engine = _engine(installed, KIM)
    mix = _music(1.5)
    path = tmp_path / "mix.wav"
    sf.write(path, mix.T.numpy(), RATE, subtype="FLOAT")
    params = SeparateParams()
    assert params.model == DEFAULT_SEPARATE_MODEL == "mel-roformer-kim-vocals"
    progress: list[float] = []
    emitted: list[tuple[Any, int]] = []  # each stem as announced, with its size then: complete before the run ends
    with partial_outputs(lambda output: emitted.append((output, output.path.stat().st_size))):
        result = engine.run(path, params, tmp_path / "out", lambda fraction, stage=None: progress.append(fraction))
    assert [out.name for out in result.outputs] == ["vocals.wav", "instrumental.wav"]
    assert [output for output, _ in emitted] == result.outputs
    assert [size for _, size in emitted] == [output.path.stat().st_size for output in result.outputs]
    vocals, rate = sf.read(result.outputs[0].path, dtype="float32")
    instrumental, _ = sf.read(result.outputs[1].path, dtype="float32")
    assert rate == RATE and vocals.shape == instrumental.shape == (mix.shape[-1], 2)
    # Two-stem output: the instrumental is the mix minus the vocals (up to the WAV writer's sample format).
    assert np.allclose(vocals + instrumental, mix.T.numpy(), atol=2e-4)
    assert np.abs(vocals).max() > 1e-3
    assert progress[-1] == 1.0 and progress == sorted(progress)

    two = engine.run(path, SeparateParams(two_stems="vocals"), tmp_path / "two")
    assert [out.name for out in two.outputs] == ["vocals.wav", "no_vocals.wav"]
    no_vocals, _ = sf.read(two.outputs[1].path, dtype="float32")
    assert np.allclose(no_vocals, instrumental, atol=1e-6)
    with pytest.raises(EngineError):
        engine.run(None, params, tmp_path / "none")


def test_four_stem_model_and_its_no_stem(installed: Any, tmp_path: Path) -> None:
    engine = _engine(installed, FOUR_STEM)
    path = tmp_path / "mix.wav"
    mix = _music(1.0)
    sf.write(path, mix.T.numpy(), RATE, subtype="FLOAT")
    result = engine.run(path, SeparateParams(model="bs-roformer-zfturbo-4stem"), tmp_path / "out")
    assert [out.name for out in result.outputs] == ["drums.wav", "bass.wav", "other.wav", "vocals.wav"]
    two = engine.run(path, SeparateParams(model="bs-roformer-zfturbo-4stem", two_stems="drums"), tmp_path / "two")
    drums, _ = sf.read(two.outputs[0].path, dtype="float32")
    rest, _ = sf.read(two.outputs[1].path, dtype="float32")
    assert np.allclose(drums + rest, mix.T.numpy(), atol=2e-4)


def test_the_loader_refuses_unverified_files(installed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights, lock, _ = installed
    # The registry's separate factory hands roformer keys to this engine (reading $STUDIO_MODELS_LOCK's pins).
    monkeypatch.setenv("STUDIO_MODELS_LOCK", str(lock))
    assert isinstance(build_separate_engine(KIM, weights, device="cpu"), RoformerEngine)
    tampered = tmp_path / "weights"
    (tampered / KIM).mkdir(parents=True)
    for source in (weights / KIM).iterdir():
        (tampered / KIM / source.name).write_bytes(source.read_bytes())
    checkpoint = tampered / KIM / PUBLISHED[KIM].checkpoint
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        build_engine(KIM, tampered, device="cpu", lock=load_lock(lock))
    with pytest.raises(FileNotFoundError, match="pull"):
        build_engine(KIM, tmp_path / "empty", device="cpu", lock=load_lock(lock))
    # The repository's 4-stem entry has no pinned config hash: never loaded, whatever is on disk.
    with pytest.raises(ValueError, match="unverifiable"):
        build_engine(FOUR_STEM, weights, device="cpu", lock=load_lock(DEFAULT_LOCK_PATH))


def test_engine_moves_between_devices_and_picks_precision(installed: Any) -> None:
    engine = _engine(installed, VIPERX)
    assert engine.device == torch.device("cpu") and engine.precision == "fp32"
    assert engine.batch_windows == 4  # the config's inference.batch_size
    assert engine.to("meta").device.type == "meta" and engine.precision == "fp32"
    assert engine.configure(precision="bf16").precision == "bf16"


def test_params_route_roformer_models_and_keep_demucs_selectable() -> None:
    assert separate_model_key("mel-roformer-kim-vocals") == "roformer/mel-roformer-kim-vocals"
    assert separate_model_key("htdemucs") == "demucs/htdemucs"
    assert SeparateParams().compute_factor() == 1
    # A stored job's params (every field, defaults included) validate again on the worker.
    assert SeparateParams.model_validate(SeparateParams().model_dump()) == SeparateParams()
    assert SeparateParams(model="htdemucs_ft", shifts=2).compute_factor() == 8
    with pytest.raises(ValueError, match="demucs models only"):
        SeparateParams(shifts=2)
    with pytest.raises(ValueError, match="demucs models only"):
        SeparateParams(model="bs-roformer-viperx-1297", overlap=0.5)
    with pytest.raises(ValueError, match="two_stems"):
        SeparateParams(two_stems="drums")
    # The default is the best model whose weights may be sold: the highest published vocals SDR among the
    # commercially usable separation rows, and ahead of every demucs row.
    lock = load_lock()
    default = lock.get(separate_model_key(DEFAULT_SEPARATE_MODEL))
    assert default.commercial_use and default.verifiable and not default.licence_unresolved
    others = [entry for entry in lock.for_task("separate") if entry.key != default.key]
    assert all(entry.sdr["vocals"] < default.sdr["vocals"] for entry in others)
    assert all(not entry.commercial_use for entry in others if entry.key.startswith("demucs/"))


@pytest.mark.parametrize(("rate", "n_fft", "bands"), [(44100, 2048, 60), (44100, 2048, 128), (48000, 4096, 64)])
def test_mel_bands_are_librosas(rate: int, n_fft: int, bands: int) -> None:
    """The mel filter bank (recomputed so the worker image needs no librosa) is librosa's, bit for bit, before the
    two corners MSST forces positive."""
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=bands)
    expected[0][0] = expected[-1, -1] = 1.0
    assert np.array_equal(mel_filter_bank(rate, n_fft, bands), expected)
