"""A tiny random HTDemucs in demucs's own release format, loadable by `get_model(name, repo=...)`."""

from __future__ import annotations

import warnings
from pathlib import Path

import yaml
from demucs.htdemucs import HTDemucs
from demucs.states import get_state, save_with_checksum

from inference.params import DEMUCS_SOURCES


def tiny_htdemucs(seed: int) -> HTDemucs:
    import torch

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # demucs warns about zero-size init at these tiny widths
        return HTDemucs(
            list(DEMUCS_SOURCES["htdemucs"]), channels=4, depth=4, dconv_comp=2, t_layers=1, t_heads=2, segment=2
        )


def save_demucs(model: HTDemucs, repo: Path, sig: str) -> None:
    """demucs's release format: {klass, args, kwargs, state (fp16)} saved as `<sig>-<sha256[:8]>.th`."""
    args, kwargs = model._init_args_kwargs
    package = {"klass": model.__class__, "args": args, "kwargs": kwargs, "state": get_state(model, None, half=True)}
    save_with_checksum(package, repo / f"{sig}.th")


def build_tiny_demucs(weights_dir: Path, name: str = "htdemucs") -> Path:
    """Write `weights_dir/demucs/<name>/` as `studio models pull` lays out the real model: one .th and its yaml."""
    folder = weights_dir / "demucs" / name
    folder.mkdir(parents=True, exist_ok=True)
    save_demucs(tiny_htdemucs(0), folder, "a1b2c3d4")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"models": ["a1b2c3d4"]}))
    return folder
