"""Music source separation with demucs 4.1.0 (htdemucs, htdemucs_ft, htdemucs_6s).

Weights are a local demucs repo at `weights_dir / "demucs/<model>"` (the `.th` files named `<sig>-<sha256[:8]>.th`
plus the bag yaml), loaded by demucs's own `get_model(name, repo=...)`, which verifies the checksums.

Bounded memory: `apply_model` already runs the network on ~8 s segments, but it returns the whole track as one
(sources, channels, samples) float32 tensor and builds one or two more of that size on the way (the shift trick,
bags). We instead run it on long windows that overlap by a short cross-fade and stream every window's stems
straight into the output files, so memory holds the decoded input plus batch_windows windows of stems, whatever
the length.

Batching: apply_model passes a leading batch dimension through its segment loop, so `batch_windows` windows of equal
length are stacked into one [B, channels, samples] input and every forward runs B segments at once, which keeps a
GPU busy where batch 1 does not. Eval-mode HTDemucs treats batch items independently (it normalises per item), so
with shifts=0 the stems equal the unbatched ones to float tolerance; with shifts > 0 a batch shares each shift's
random offset, which changes only which random draw each window gets.

Precision and memory: fp32 on CUDA and CPU. demucs ships no half-precision path and its published SDR is measured
in fp32; its STFT/iSTFT and complex masking are where fp16 loses accuracy, and fp32 fits easily (a few GB on an
A10G at batch 1). The CUDA default of 4 windows per batch is an unmeasured choice sized for a 24 GB A10G: GPU
memory grows with it (B segments' activations per forward), and so does host memory (B windows of stems, ~90 MB
each for 4 sources).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from demucs.apply import BagOfModels, apply_model
from demucs.pretrained import get_model
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, ProgressFn, no_progress
from inference.params import SeparateParams

if TYPE_CHECKING:
    from inference.separate_roformer import RoformerEngine

# 60 s windows with 2 s cross-fades: ~3% extra compute, ~90 MB of stems per window for 4 sources.
DEFAULT_CHUNK_SECONDS = 60.0
DEFAULT_CROSSFADE_SECONDS = 2.0


def default_batch_windows(device: torch.device) -> int:
    """Windows per apply_model call: 4 on CUDA (see the module docstring); 1 on CPU, where the cores are already
    busy at batch 1, so a bigger batch is no faster and only holds more stems in memory."""
    return 4 if device.type == "cuda" else 1


def build_engine(
    model_key: str,
    weights_dir: Path,
    *,
    device: str | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    crossfade_seconds: float = DEFAULT_CROSSFADE_SECONDS,
    batch_windows: int | None = None,
) -> SeparateEngine | RoformerEngine:
    """Load `demucs/<name>` here, or hand `roformer/<name>` keys to inference.separate_roformer (the registry's one
    factory for the separate task)."""
    if model_key.startswith("roformer/"):
        from inference import separate_roformer

        return separate_roformer.build_engine(model_key, weights_dir, device=device, batch_windows=batch_windows)
    repo = weights_dir / model_key
    if not repo.is_dir():
        raise FileNotFoundError(f"no demucs weights at {repo}: pull {model_key} first")
    name = model_key.removeprefix("demucs/")
    model = get_model(name, repo=repo)  # checks each file's sha256 prefix against its name
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return SeparateEngine(name, model.to(target), target, chunk_seconds, crossfade_seconds, batch_windows)


class SeparateEngine:
    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        device: torch.device,
        chunk_seconds: float,
        crossfade_seconds: float,
        batch_windows: int | None = None,
    ) -> None:
        if not 0 < crossfade_seconds < chunk_seconds:
            raise ValueError("crossfade_seconds must be positive and shorter than chunk_seconds")
        self._default_batches = batch_windows is None
        if batch_windows is None:
            batch_windows = default_batch_windows(device)
        if batch_windows < 1:
            raise ValueError("batch_windows must be at least 1")
        self.batch_windows: int = batch_windows
        self.name = name
        self.model = model
        self.device = device
        self.sources: list[str] = list(model.sources)
        self.samplerate: int = model.samplerate
        self.channels: int = model.audio_channels
        self.chunk = int(chunk_seconds * self.samplerate)
        self.crossfade = int(crossfade_seconds * self.samplerate)

    def to(self, device: str | torch.device) -> SeparateEngine:
        """Move the loaded model (a worker loads on the CPU, then moves it to the GPU after a snapshot restore)."""
        target = torch.device(device)
        self.model.to(target)
        self.device = target  # only once the move succeeded (inference/base.py `DeviceEngine`)
        if self._default_batches:
            self.batch_windows = default_batch_windows(self.device)
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
        # demucs normalises by the whole track's statistics (demucs.api.Separator.separate_tensor).
        reference = mix.mean(0)
        mean, std = float(reference.mean()), float(reference.std()) + 1e-8
        del reference

        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {stem: out_dir / f"{stem}.{params.format}" for stem in stems}
        writers = {
            stem: audio.AudioWriter(path, self.samplerate, self.channels, params.format) for stem, path in paths.items()
        }
        try:
            # The whole loop runs in inference mode: the stems are inference tensors, which may be edited in place
            # (denormalise, cross-fade) only inside it, and out-of-place edits would hold a second batch of stems.
            with torch.inference_mode():
                for block in self._separate(mix, mean, std, params, progress):
                    for stem, writer in writers.items():
                        writer.write(self._stem(block, stem, params).numpy())
                    # block is a view of its whole batch: drop it so that batch is freed before the next one is built.
                    del block
        finally:
            for writer in writers.values():
                writer.close()
        metadata = {"sample_rate": self.samplerate, "channels": self.channels, "duration_s": length / self.samplerate}
        outputs = audio.finished_stems(paths, params.format, metadata)
        progress(1.0, "done")
        return EngineResult(outputs=outputs, metrics={"audio_seconds": length / self.samplerate})

    def _load(self, path: Path) -> torch.Tensor:
        """The decoded track at the model's rate and channel count (demucs's convert_audio_channels rules)."""
        decoded = torch.from_numpy(audio.decode(path, sample_rate=self.samplerate))
        if decoded.shape[0] == 1:
            return decoded.expand(self.channels, -1)  # a view: mono is not copied
        return decoded[: self.channels]

    def _stem(self, block: torch.Tensor, stem: str, params: SeparateParams) -> torch.Tensor:
        if stem == f"no_{params.two_stems}":
            keep = self.sources.index(params.two_stems)
            return block.sum(0) - block[keep]
        return block[self.sources.index(stem)]

    def _separate(
        self, mix: torch.Tensor, mean: float, std: float, params: SeparateParams, progress: ProgressFn
    ) -> Iterator[torch.Tensor]:
        """Yield consecutive (sources, channels, samples) blocks of the separated track, in order.

        Window k covers [k*chunk, (k+1)*chunk + crossfade); where two windows overlap, a linear cross-fade hands
        over from one to the next, so each window's edges (where the model saw no context) weigh little. The chunk
        is a whole number of apply_model's segment strides, so inside a window the segments fall where they fall
        for the whole track: away from the joins the result equals whole-track apply_model (with shifts=0).
        Consecutive windows of equal length go through apply_model together, batch_windows at a time.
        """
        length = mix.shape[-1]
        stride = int((1 - params.overlap) * int(self._segment_seconds() * self.samplerate))
        chunk = max(1, round(self.chunk / stride)) * stride
        spans = [
            (start, min(length, start + chunk + self.crossfade))
            for start in range(0, max(length - self.crossfade, 1), chunk)
        ]
        tail: torch.Tensor | None = None
        index = 0
        for batch in self._batches(spans):
            # Progress runs over the batch's share of the windows.
            lo, hi = index / len(spans), (index + len(batch)) / len(spans)
            windows = torch.stack([mix[:, start:end] for start, end in batch])
            windows.sub_(mean).div_(std)  # in place: the stack is already a copy
            estimates = self._apply(windows, params, lambda f, lo=lo, hi=hi: lo + f * (hi - lo), progress)
            del windows
            estimates.mul_(std).add_(mean)
            for estimate in estimates:
                if tail is not None:
                    ramp = (torch.arange(tail.shape[-1], dtype=estimate.dtype) + 0.5) / tail.shape[-1]
                    estimate[..., : tail.shape[-1]] = tail * (1 - ramp) + estimate[..., : tail.shape[-1]] * ramp
                if index == len(spans) - 1:
                    yield estimate
                else:
                    tail = estimate[..., chunk:].clone()  # a copy, so the tail does not keep the batch alive
                    yield estimate[..., :chunk]
                index += 1
            # Free this batch before apply_model builds the next: one batch of stems at a time, plus the tail.
            del estimate, estimates

    def _batches(self, spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """Runs of consecutive equal-length windows (stacking needs one length), at most batch_windows each."""
        batches: list[list[tuple[int, int]]] = []
        for start, end in spans:
            last = batches[-1] if batches else None
            if last is not None and len(last) < self.batch_windows and last[0][1] - last[0][0] == end - start:
                last.append((start, end))
            else:
                batches.append([(start, end)])
        return batches

    def _segment_seconds(self) -> float:
        first = self.model.models[0] if isinstance(self.model, BagOfModels) else self.model
        return float(first.segment)

    def _apply(
        self, windows: torch.Tensor, params: SeparateParams, scale: Callable[[float], float], progress: ProgressFn
    ) -> torch.Tensor:
        """apply_model on a (batch, channels, samples) stack of windows: (batch, sources, channels, samples) on CPU.

        `scale` maps this call's own progress (0..1) onto the track's.
        """
        models = len(self.model.models) if isinstance(self.model, BagOfModels) else 1
        shifts = max(params.shifts, 1)
        length = windows.shape[-1]

        def on_segment(info: dict[str, Any]) -> None:
            # apply_model reports each segment's start/end (one segment of every window in the batch at once);
            # a raise here (cancellation) stops the remaining ones.
            if info.get("state") != "end":
                return
            within = min(1.0, info["segment_offset"] / length)
            progress(
                0.99 * scale((info["model_idx_in_bag"] + (info["shift_idx"] + within) / shifts) / models), "separating"
            )

        assert torch.is_inference_mode_enabled(), "run() holds torch.inference_mode around separation"
        estimates = apply_model(
            self.model,
            windows,
            shifts=params.shifts,
            split=True,
            overlap=params.overlap,
            device=self.device,
            callback=on_segment,
        )
        return estimates.cpu()
