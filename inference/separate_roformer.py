"""Music source separation with RoFormer models (BS-RoFormer, Mel-Band RoFormer) in the published MSST format.

A model is two files pinned in models.lock under `roformer/<name>`: the checkpoint (a `.ckpt` holding the network's
state_dict, loaded with strict=True into inference.roformer_arch) and the YAML config it was trained with, from
the Music-Source-Separation-Training (MSST) project. `studio models pull` puts them in `weights_dir/roformer/<name>/`.

Inference is MSST's `demix` (utils/model_utils.py), the way these models are trained and scored: windows of the
config's `chunk_size` every `chunk_size / num_overlap` samples, each weighted by a window with linear fades of
chunk_size / 10 (none at the track's first start and last end), summed and divided by the summed weights; the
track is first reflect-padded by chunk_size - step on both sides. Windows go through the network
`batch_windows` at a time (the config's inference.batch_size by default), under fp16 autocast on CUDA when the
config trained with AMP (`training.use_amp`, as demix does) and fp32 on CPU. One deliberate difference: demix
picks the no-fade edges once per batch (so with batch_size > 1 every window of the first batch loses its fade-in);
here each window gets its own, which is what demix does at batch_size 1.

Bounded memory: a sample is final once the last window covering it has run, so after each batch everything
before the next window's start is divided out and streamed to the output files; memory holds the decoded input
plus one batch of windows and at most one window of accumulated stems, whatever the length. The reflect padding
is read through an index map instead of padding a copy of the whole track.

Two-stem output: `no_<stem>` is the mix minus that stem (MSST's `extract_instrumental`), and a vocals model's
second source, `instrumental`, is the same difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, ProgressFn, no_progress
from inference.models import ModelsLock, load_lock, sha256_file
from inference.params import SeparateParams
from inference.roformer_arch import BSRoformer, MelBandRoformer

Precision = Literal["fp16", "bf16", "fp32"]
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
INSTRUMENTAL = "instrumental"

# Config keys of the published models that change nothing at inference: the training loss, gradient
# checkpointing, attention kernels (same math), and fields MSST itself derives or ignores.
_INFERENCE_IRRELEVANT = {
    "multi_stft_resolution_loss_weight",
    "multi_stft_resolutions_window_sizes",
    "multi_stft_hop_size",
    "multi_stft_normalized",
    "use_torch_checkpoint",
    "flash_attn",
    "sage_attention",
    "dim_freqs_in",
}


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the one Python tag MSST's configs use (`!!python/tuple`), built as a plain tuple."""


_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node)),  # type: ignore[arg-type]
)


def load_config_yaml(text: str) -> dict[str, Any]:
    return yaml.load(text, Loader=_ConfigLoader)


@dataclass(frozen=True)
class RoformerConfig:
    architecture: Literal["bs_roformer", "mel_band_roformer"]
    model_kwargs: dict[str, Any]
    sample_rate: int
    channels: int
    chunk_size: int
    num_overlap: int
    batch_size: int
    instruments: tuple[str, ...]  # what the network outputs, in order
    use_amp: bool

    @property
    def sources(self) -> tuple[str, ...]:
        """The stems a job can ask for: the network's, plus `instrumental` for a single-stem (vocals) model."""
        return self.instruments + ((INSTRUMENTAL,) if len(self.instruments) == 1 else ())


def read_config(path: Path) -> RoformerConfig:
    """Parse an MSST YAML config. The architecture follows from its band layout: fixed `freqs_per_bands` is
    BS-RoFormer, `num_bands` mel bands is Mel-Band RoFormer."""
    raw = load_config_yaml(path.read_text())
    model = {k: v for k, v in raw["model"].items() if k not in _INFERENCE_IRRELEVANT}
    if model.pop("use_pope", False):
        raise ValueError(f"{path.name}: PoPE positions are not supported (no released model uses them)")
    architecture: Literal["bs_roformer", "mel_band_roformer"]
    if "freqs_per_bands" in model:
        architecture = "bs_roformer"
        model["freqs_per_bands"] = tuple(model["freqs_per_bands"])
    elif "num_bands" in model:
        architecture = "mel_band_roformer"
    else:
        raise ValueError(f"{path.name}: neither freqs_per_bands (BS-RoFormer) nor num_bands (Mel-Band RoFormer)")
    training, inference = raw["training"], raw.get("inference", {})
    target = training.get("target_instrument")
    instruments = (target,) if target else tuple(training["instruments"])
    if len(instruments) != model.get("num_stems", 1):
        raise ValueError(f"{path.name}: {len(instruments)} instruments for num_stems={model.get('num_stems', 1)}")
    return RoformerConfig(
        architecture=architecture,
        model_kwargs=model,
        sample_rate=int(raw["audio"]["sample_rate"]),
        channels=2 if model.get("stereo") else 1,
        chunk_size=int(inference.get("chunk_size", raw["audio"]["chunk_size"])),
        num_overlap=int(inference["num_overlap"]),
        batch_size=int(inference.get("batch_size", 1)),
        instruments=instruments,
        use_amp=bool(training.get("use_amp", True)),
    )


def build_network(config: RoformerConfig) -> BSRoformer | MelBandRoformer:
    network = BSRoformer if config.architecture == "bs_roformer" else MelBandRoformer
    return network(**config.model_kwargs)


def load_network(config: RoformerConfig, checkpoint: Path) -> BSRoformer | MelBandRoformer:
    """The network with the checkpoint's state_dict loaded strictly: every published name must match."""
    model = build_network(config)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_engine(
    model_key: str,
    weights_dir: Path,
    *,
    device: str | None = None,
    batch_windows: int | None = None,
    precision: Precision | None = None,
    lock: ModelsLock | None = None,
) -> RoformerEngine:
    """Load `roformer/<name>` from `weights_dir/roformer/<name>/` as models.lock lays it out.

    The lock entry must be verifiable and every file on disk must match its pinned sha256 (a few seconds for the
    released ~0.5-0.9 GB checkpoints, once per worker); the engine is moved to `device` (default: CUDA when
    present)."""
    entry = (lock or load_lock()).get(model_key)
    if not entry.verifiable:
        raise ValueError(f"{model_key} is unverifiable in models.lock ({entry.unverifiable}): it is never loaded")
    folder = Path(weights_dir) / model_key
    for model_file in entry.files:
        path = folder / model_file.path
        if not path.is_file():
            raise FileNotFoundError(f"no {model_file.path} at {folder}: pull {model_key} first")
        if sha256_file(path) != model_file.sha256:
            raise ValueError(f"{path} does not match its sha256 in models.lock: pull {model_key} again")
    (checkpoint,) = [folder / f.path for f in entry.files if f.path.endswith(".ckpt")]
    (config_path,) = [folder / f.path for f in entry.files if f.path.endswith(".yaml")]
    config = read_config(config_path)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    engine = RoformerEngine(model_key.removeprefix("roformer/"), config, load_network(config, checkpoint), target)
    return engine.configure(batch_windows=batch_windows, precision=precision)


class RoformerEngine:
    def __init__(self, name: str, config: RoformerConfig, model: torch.nn.Module, device: torch.device) -> None:
        self.name = name
        self.config = config
        self.model = model.to(device)
        self.device = device
        self.sources = config.sources
        self.samplerate = config.sample_rate
        self.channels = config.channels
        self.batch_windows = config.batch_size
        self._precision: Precision | None = None

    def configure(self, *, batch_windows: int | None = None, precision: Precision | None = None) -> RoformerEngine:
        if batch_windows is not None:
            if batch_windows < 1:
                raise ValueError("batch_windows must be at least 1")
            self.batch_windows = batch_windows
        self._precision = precision
        return self

    @property
    def precision(self) -> Precision:
        """fp32 on CPU; on CUDA fp16 autocast when the config trained with AMP (as MSST's demix runs it)."""
        if self._precision is not None:
            return self._precision
        return "fp16" if self.device.type == "cuda" and self.config.use_amp else "fp32"

    def to(self, device: str | torch.device) -> RoformerEngine:
        """Move the loaded model (a worker loads on the CPU, then moves it to the GPU after a snapshot restore)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def run(
        self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn = no_progress
    ) -> EngineResult:
        if input_path is None:
            raise EngineError("separate needs an audio file", code="missing_input")
        assert isinstance(params, SeparateParams)
        if params.model != self.name:
            raise ValueError(f"this engine runs {self.name}, the job asks for {params.model}")
        stems = params.output_stems()
        progress(0.0, "decoding")
        mix = self._load(input_path)
        length = mix.shape[-1]
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {stem: out_dir / f"{stem}.{params.format}" for stem in stems}
        writers = {
            stem: audio.AudioWriter(path, self.samplerate, self.channels, params.format) for stem, path in paths.items()
        }
        try:
            for start, block in self.separate(mix, progress):
                segment = mix[:, start : start + block.shape[-1]]
                for stem, writer in writers.items():
                    writer.write(self._stem(block, segment, stem).numpy())
        finally:
            for writer in writers.values():
                writer.close()
        metadata = {"sample_rate": self.samplerate, "channels": self.channels, "duration_s": length / self.samplerate}
        outputs = audio.finished_stems(paths, params.format, metadata)
        progress(1.0, "done")
        return EngineResult(outputs=outputs, metrics={"audio_seconds": length / self.samplerate})

    def _load(self, path: Path) -> torch.Tensor:
        decoded = torch.from_numpy(audio.decode(path, sample_rate=self.samplerate))
        if decoded.shape[0] == 1:
            return decoded.expand(self.channels, -1)  # MSST duplicates a mono input for a stereo model
        return decoded[: self.channels]

    def _stem(self, block: torch.Tensor, segment: torch.Tensor, stem: str) -> torch.Tensor:
        if stem.startswith("no_"):
            return segment - self._source(block, segment, stem.removeprefix("no_"))
        return self._source(block, segment, stem)

    def _source(self, block: torch.Tensor, segment: torch.Tensor, name: str) -> torch.Tensor:
        if name == INSTRUMENTAL and name not in self.config.instruments:
            return segment - block[0]
        return block[self.config.instruments.index(name)]

    def separate(self, mix: torch.Tensor, progress: ProgressFn = no_progress) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start sample, (instruments, channels, samples) block) of the separated track, in order.

        Positions below are in the padded track's coordinates; blocks are yielded in the input's.
        """
        length = mix.shape[-1]
        chunk = self.config.chunk_size
        step = chunk // self.config.num_overlap
        fade = chunk // 10
        border = chunk - step
        pad = border if length > 2 * border and border > 0 else 0
        padded_length = length + 2 * pad
        starts = list(range(0, padded_length, step))
        ramp = torch.ones(chunk)
        ramp[-fade:] = torch.linspace(1, 0, fade)
        ramp[:fade] = torch.linspace(0, 1, fade)

        sums = torch.zeros(len(self.config.instruments), self.channels, 0)
        weights = torch.zeros(0)
        base = 0  # padded position of sums[..., 0]
        with torch.inference_mode():
            for first in range(0, len(starts), self.batch_windows):
                batch = starts[first : first + self.batch_windows]
                windows = torch.stack([self._window(mix, start, pad, padded_length) for start in batch])
                estimates = self._forward(windows)
                del windows
                for start, estimate in zip(batch, estimates, strict=True):
                    used = min(chunk, padded_length - start)
                    weight = ramp.clone()
                    if start == 0:
                        weight[:fade] = 1
                    if start + step >= padded_length:
                        weight[-fade:] = 1
                    end = start + used - base
                    if end > weights.shape[0]:
                        grow = end - weights.shape[0]
                        sums = torch.cat([sums, sums.new_zeros(*sums.shape[:-1], grow)], dim=-1)
                        weights = torch.cat([weights, weights.new_zeros(grow)])
                    sums[..., start - base : end] += estimate[..., :used] * weight[:used]
                    weights[start - base : end] += weight[:used]
                del estimates
                # Every sample before the next window's start has all its windows: divide it out and stream it.
                done = first + len(batch) >= len(starts)
                final = padded_length if done else starts[first + len(batch)]
                block = torch.nan_to_num(sums[..., : final - base] / weights[: final - base], nan=0.0)
                sums, weights = sums[..., final - base :].clone(), weights[final - base :].clone()
                lo, hi = max(base, pad), min(final, pad + length)
                if hi > lo:
                    yield lo - pad, block[..., lo - base : hi - base]
                base = final
                progress(0.99 * min(1.0, (first + len(batch)) / len(starts)), "separating")

    def _window(self, mix: torch.Tensor, start: int, pad: int, padded_length: int) -> torch.Tensor:
        """Samples [start, start + chunk) of the reflect-padded track, padded to a whole chunk as demix does
        (reflect when more than half a chunk is left, zeros otherwise)."""
        chunk = self.config.chunk_size
        length = mix.shape[-1]
        index = torch.arange(start, min(start + chunk, padded_length)) - pad
        index = index.abs()  # reflect at the start: -k -> k
        index = torch.where(index > length - 1, 2 * (length - 1) - index, index)  # reflect at the end
        part = mix[:, index].to(self.device)
        used = part.shape[-1]
        mode = "reflect" if used > chunk // 2 else "constant"
        return F.pad(part, (0, chunk - used), mode=mode, value=0.0)

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(batch, channels, chunk) -> (batch, instruments, channels, chunk) float32 on the CPU."""
        precision = self.precision
        with torch.autocast(self.device.type, dtype=_AUTOCAST.get(precision), enabled=precision != "fp32"):
            estimates = self.model(windows)
        return estimates.float().cpu()
