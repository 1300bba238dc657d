"""Tiny random RoFormer checkpoints in the published MSST format, installed the way real weights are.

Each tiny model starts from a published config (tests/data/roformer, copied verbatim from
ZFTurbo/Music-Source-Separation-Training at ccc011abf7f89dd7922bb2888d48493b575c0289) with only sizes shrunk:
width, depth, heads, head size, MLP expansion and the chunk length. STFT settings, band layout, stems, mask-estimator
depth and every other structural key stay as published, so the parameter names and shapes follow the same rules as
the real files'. The state_dict is produced by MSST's OWN model classes (tests/msst_reference), the code the
published checkpoints come from, and saved as MSST saves it (`torch.save(model.state_dict())`): loading it into
inference.roformer_arch with strict=True is the check that our names are the published ones.

Installing: the files are served over real HTTP on 127.0.0.1 and pinned (sha256, size) in a models.lock under the
real keys, so `studio models pull` fetches and verifies them exactly as it does the released weights.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import yaml

from inference.separate_roformer import load_config_yaml

DATA = Path(__file__).parent / "data" / "roformer"
TINY_CHUNK = 17640  # 0.4 s at 44.1 kHz: 41 STFT frames per window


@dataclass(frozen=True)
class Published:
    key: str  # models.lock key
    config: str  # the published config in tests/data/roformer
    checkpoint: str  # the published checkpoint's file name
    architecture: str  # MSST's model_type


PUBLISHED = {
    "roformer/mel-roformer-kim-vocals": Published(
        "roformer/mel-roformer-kim-vocals",
        "config_vocals_mel_band_roformer_kj.yaml",
        "MelBandRoformer.ckpt",
        "mel_band_roformer",
    ),
    "roformer/bs-roformer-viperx-1297": Published(
        "roformer/bs-roformer-viperx-1297",
        "model_bs_roformer_ep_317_sdr_12.9755.yaml",
        "model_bs_roformer_ep_317_sdr_12.9755.ckpt",
        "bs_roformer",
    ),
    # The 4-stem release's own config is a release asset with no published hash; the repository's config for the
    # same 384-wide, 8-deep, 4-stem BS-RoFormer gives the structure (its sage_attention flag, a kernel choice that
    # MSST's current classes no longer take, is dropped).
    "roformer/bs-roformer-zfturbo-4stem": Published(
        "roformer/bs-roformer-zfturbo-4stem",
        "config_musdb18_bs_roformer_384_8_2_485100_sage.yaml",
        "model_bs_roformer_ep_17_sdr_9.6568.ckpt",
        "bs_roformer",
    ),
}


def tiny_config(published: Published, chunk_size: int = TINY_CHUNK) -> dict[str, Any]:
    config = load_config_yaml((DATA / published.config).read_text())
    model = config["model"]
    model.update(dim=16, depth=1, dim_head=8, heads=2, mlp_expansion_factor=1)
    model.pop("sage_attention", None)
    config["audio"]["chunk_size"] = chunk_size
    return config


def reference_model(published: Published, config: dict[str, Any]) -> torch.nn.Module:
    """MSST's own class for the model, built from the config as MSST's get_model_from_config does."""
    if published.architecture == "bs_roformer":
        from tests.msst_reference.bs_roformer import BSRoformer as Reference
    else:
        from tests.msst_reference.mel_band_roformer import MelBandRoformer as Reference  # type: ignore[assignment]
    return Reference(**config["model"])


def _plain(value: Any) -> Any:
    """Tuples as lists, so the YAML is plain (our reader takes both)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def tiny_files(key: str, seed: int = 0, chunk_size: int = TINY_CHUNK) -> dict[str, bytes]:
    """{file name: bytes} of the tiny model: its checkpoint (under the published name) and its YAML config."""
    published = PUBLISHED[key]
    config = tiny_config(published, chunk_size)
    torch.manual_seed(seed)
    model = reference_model(published, config)
    # Random norm gains too, so a mis-wired norm cannot hide behind all-ones weights.
    for name, parameter in model.named_parameters():
        if name.endswith("gamma"):
            parameter.data.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    yaml_text = yaml.safe_dump(_plain(config), sort_keys=False)
    return {published.checkpoint: buffer.getvalue(), Path(published.config).name: yaml_text.encode()}


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[str]:
    """Serve {path: bytes} over HTTP on 127.0.0.1; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def lock_text(url: str, models: dict[str, dict[str, bytes]]) -> str:
    """models.lock rows pinning the tiny files under the real keys, as an operator pins a custom model."""
    rows = ["version = 1\n"]
    for key, files in models.items():
        rows.append(
            f'\n[models."{key}"]\ntask = "separate"\nsource = "built by tests/tiny_roformer.py"\nlicence = "MIT"\n'
            "commercial_use = true\nenabled_by_default = true\n"
        )
        for name, body in files.items():
            rows.append(
                f'\n[[models."{key}".files]]\npath = "{name}"\nurl = "{url}/{key}/{name}"\n'
                f'sha256 = "{hashlib.sha256(body).hexdigest()}"\nbytes = {len(body)}\n'
            )
    return "".join(rows)


def install_tiny(
    weights_dir: Path, lock_path: Path, keys: list[str], seed: int = 0, chunk_size: int = TINY_CHUNK
) -> dict[str, dict[str, bytes]]:
    """Write a models.lock pinning tiny models under `keys` and pull them into `weights_dir` over HTTP (sha256
    checked by the loader). Point STUDIO_MODELS_LOCK at `lock_path` to run them."""
    from inference.models import load_lock, pull

    models = {key: tiny_files(key, seed, chunk_size) for key in keys}
    served = {f"{key}/{name}": body for key, files in models.items() for name, body in files.items()}
    with serve(served) as url:
        lock_path.write_text(lock_text(url, models))
        states = pull(keys, weights_dir, lock=load_lock(lock_path))
    assert all(state.state == "present" for state in states), states
    return models
