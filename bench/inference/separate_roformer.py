"""Benchmark case for `separate` with the default RoFormer model: our engine vs MSST's own inference called directly.

The released checkpoint cannot be fetched offline, so the model is the TINY RANDOM Mel-Band RoFormer of
tests/tiny_roformer.py (Kimberley Jensen's published config with the widths shrunk) at the published chunk size
(352800 samples, 8 s), installed through models.lock's loader and built by `build_engine`. The direct side is what
MSST's inference.py does with the same weights: MSST's own MelBandRoformer class (tests/msst_reference, verbatim),
its `demix` on the whole decoded track, then one file per stem plus the instrumental (mix minus vocals). Speed figures
show the inference loop's cost around the network; peak memory shows how demix's whole-track result and counter
tensors (plus its padded copy of the input) grow with duration, against our streaming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.inference.common import BenchCase, write_wav
from inference import audio
from inference.base import no_progress
from inference.models import load_lock
from inference.params import SeparateParams
from inference.separate_roformer import RoformerEngine, build_engine

RATE = 44100
KEY = "roformer/mel-roformer-kim-vocals"
PUBLISHED_CHUNK = 352800


def make_input(minutes: float, folder: Path) -> Path:
    """A stereo 16-bit wav of gated tones and noise."""
    rng = np.random.default_rng(0)

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / RATE
        gate = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float32)
        tone = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * gate * np.sin(2 * np.pi * 440 * t)
        return (tone + 0.05 * rng.standard_normal((2, t.size))).T

    return write_wav(folder / f"mix_{minutes:g}min.wav", minutes, RATE, 2, samples)


def setup(scratch: Path) -> tuple[RoformerEngine, torch.nn.Module]:
    from tests.tiny_roformer import PUBLISHED, install_tiny, reference_model, tiny_config

    scratch.mkdir(parents=True, exist_ok=True)
    install_tiny(scratch / "weights", scratch / "models.lock", [KEY], chunk_size=PUBLISHED_CHUNK)
    engine = build_engine(KEY, scratch / "weights", device="cpu", lock=load_lock(scratch / "models.lock"))
    reference = reference_model(PUBLISHED[KEY], tiny_config(PUBLISHED[KEY], PUBLISHED_CHUNK))
    reference.load_state_dict(engine.model.state_dict())
    return engine, reference.eval()


def ours(state: tuple[RoformerEngine, torch.nn.Module], input_path: Path, out_dir: Path) -> None:
    engine, _ = state
    engine.run(input_path, SeparateParams(), out_dir, no_progress)


class _Config(dict):  # type: ignore[type-arg]
    """Attribute access, as MSST's ConfigDict gives demix."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


def direct(state: tuple[RoformerEngine, torch.nn.Module], input_path: Path, out_dir: Path) -> None:
    """MSST's inference.py on one file: decode, demix (same batch size), write vocals and mix - vocals."""
    from tests.msst_reference.demix import demix
    from tests.tiny_roformer import PUBLISHED, tiny_config

    engine, reference = state
    raw = tiny_config(PUBLISHED[KEY], PUBLISHED_CHUNK)
    raw["inference"]["batch_size"] = engine.batch_windows
    config = _Config({name: _Config(body) if isinstance(body, dict) else body for name, body in raw.items()})
    mix = audio.decode(input_path, sample_rate=RATE)
    stems = demix(config, reference, mix, torch.device("cpu"), "mel_band_roformer")
    audio.encode(out_dir / "vocals.wav", stems["vocals"], RATE, "wav")
    audio.encode(out_dir / "instrumental.wav", mix - stems["vocals"], RATE, "wav")


CASES: list[BenchCase] = [
    BenchCase(
        name="separate mel-roformer-kim-vocals (tiny random model)",
        setup=setup,
        ours=ours,
        direct=direct,
        make_input=make_input,
    ),
]
