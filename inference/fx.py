"""An effects chain: pedalboard plugins from a whitelist (`inference.params.FX_EFFECTS`), in the order given.

The input is decoded, processed and encoded in 10 s blocks through one `pedalboard.Pedalboard` called with
`reset=False`, so every plugin keeps its state across blocks: for every whitelisted effect except `pitch_shift`
the output equals one call of the same Pedalboard on the whole file (the tests check it to 1e-6; one caveat: JUCE's
vectorised filters round differently at block boundaries by ~1e-7, which a later `bitcrush` can turn into a whole
quantisation step, so a chain with bitcrush after a filter matches a one-shot call only to that step), and memory
stays flat whatever the input's length. `tail_s` seconds of silence follow the input through the chain, so
reverb and delay tails ring out; the output is exactly input + tail_s long.

`pitch_shift` (Rubber Band inside pedalboard) buffers internally: in streaming it returns fewer samples than it
is given at first, so we keep feeding silence until the expected length is out. Its streamed result is pitch-
shifted correctly and the same length, but not sample-identical to a one-shot call (whose latency handling differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pedalboard
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn
from inference.params import FX_EFFECTS, FxParams

BLOCK_SECONDS = 10.0
_MAX_FLUSH_S = 10.0  # silence fed at most to drain a buffering plugin (pitch_shift holds well under a second)


def build_board(params: FxParams) -> pedalboard.Pedalboard:
    """The chain as pedalboard plugins: each entry's validated params are the plugin's constructor arguments."""
    return pedalboard.Pedalboard(
        [getattr(pedalboard, FX_EFFECTS[entry.effect][1])(**entry.params.model_dump()) for entry in params.chain]
    )


def check_rate(params: FxParams, rate: int) -> None:
    """Filter cutoffs must sit below Nyquist, which only the input's rate tells."""
    for index, entry in enumerate(params.chain):
        cutoff = getattr(entry.params, "cutoff_frequency_hz", None)
        if cutoff is not None and cutoff >= rate / 2:
            raise EngineError(
                f"chain[{index}].params.cutoff_frequency_hz ({cutoff:g} Hz) must be below half the input's sample "
                f"rate ({rate / 2:g} Hz)",
                code="invalid_params",
            )


class FxEngine:
    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        assert isinstance(params, FxParams) and input_path is not None
        info = audio.probe(input_path)
        check_rate(params, info.sample_rate)
        rate = info.sample_rate
        board = build_board(params)
        out_path = out_dir / f"processed.{params.format}"
        block_samples = round(BLOCK_SECONDS * rate)
        samples_in = samples_out = 0
        progress(0.0, "processing")
        with audio.AudioWriter(out_path, rate, info.channels, params.format) as writer:
            for block in audio.iter_blocks(input_path, block_seconds=BLOCK_SECONDS):
                samples_in += block.shape[1]
                samples_out += _write(writer, board(block, rate, reset=False))
                progress(min(0.95, samples_in / rate / info.duration_s), "processing")
            expected = samples_in + round(params.tail_s * rate)
            silence_fed = 0
            limit = expected - samples_in + round(_MAX_FLUSH_S * rate)
            while samples_out < expected and silence_fed < limit:
                n = min(block_samples, max(1, expected - samples_out))
                silence = np.zeros((info.channels, n), np.float32)
                samples_out += _write(writer, board(silence, rate, reset=False), expected - samples_out)
                silence_fed += n
        progress(1.0, "done")
        return EngineResult(
            outputs=[
                OutputFile(out_path.name, out_path, audio.CONTENT_TYPES[params.format],
                           {"chain": [entry.effect for entry in params.chain], "tail_s": params.tail_s,
                            "sample_rate": rate, "channels": info.channels}),
            ],
            metrics={"audio_seconds": samples_in / rate, "output_seconds": samples_out / rate},
        )  # fmt: skip


def _write(writer: audio.AudioWriter, block: np.ndarray, at_most: int | None = None) -> int:
    if at_most is not None:
        block = block[:, :at_most]
    if block.shape[1]:
        writer.write(block)
    return block.shape[1]


def build_engine(model_key: str, weights_dir: Path, **options: Any) -> FxEngine:
    """No weights: `model_key` and `weights_dir` are ignored."""
    return FxEngine()
