"""What the real song engine (inference/song.py) and the builtin one share, with numpy alone: repaint's splice and
the `song.json` record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from inference.base import OutputFile
from inference.params import CoverParams, RepaintParams, SongParams

REPAINT_FADE_S = 0.02  # crossfade at each join of a repaint, inside the span


def song_task(params: BaseModel) -> str:
    return {SongParams: "song", CoverParams: "cover", RepaintParams: "repaint"}[type(params)]


def output_names(params: SongParams | CoverParams | RepaintParams) -> list[str]:
    if isinstance(params, RepaintParams):
        return ["repainted"]
    return [f"variant_{index}" for index in range(1, params.variants + 1)]


def splice(source: np.ndarray, generated: np.ndarray, start_s: float, end_s: float, rate: int) -> np.ndarray:
    """`source` (channels, samples) with [start_s, end_s) taken from `generated`, joined by linear crossfades of
    REPAINT_FADE_S inside the span, so every sample outside it is the source's own.

    `generated` is first scaled so that its RMS outside the span matches the source's there: the pipeline normalises
    its whole output to a -1 dBFS peak, which would otherwise make the new span louder or quieter than its context.
    """
    start, end = round(start_s * rate), min(round(end_s * rate), source.shape[-1])
    outside = np.ones(source.shape[-1], dtype=bool)
    outside[start:end] = False
    generated_rms = float(np.sqrt(np.mean(generated[:, outside] ** 2))) if outside.any() else 0.0
    if generated_rms > 0.0:
        generated = generated * (float(np.sqrt(np.mean(source[:, outside] ** 2))) / generated_rms)
    weight = np.zeros(source.shape[-1], dtype=np.float32)  # 0 = source, 1 = generated
    weight[start:end] = 1.0
    fade = min(round(REPAINT_FADE_S * rate), (end - start) // 2)
    if fade > 0:
        ramp = np.arange(1, fade + 1, dtype=np.float32) / (fade + 1)
        if start > 0:
            weight[start : start + fade] = ramp
        if end < source.shape[-1]:
            weight[end - fade : end] = ramp[::-1]
    mixed = np.where(weight == 0.0, source, source * (1.0 - weight) + generated * weight)
    return mixed.astype(np.float32)


def write_song_json(
    out_dir: Path,
    params: SongParams | CoverParams | RepaintParams,
    *,
    model: str,
    revision: str | None,
    seed: int,
    sample_rate: int,
    duration_s: float,
    outputs: list[OutputFile],
) -> OutputFile:
    """Everything needed to reproduce the result: the params as run (with the seed), the weights' revision."""
    record = {
        "task": song_task(params), "model": model, "revision": revision, "seed": seed, "sample_rate": sample_rate,
        "duration_s": duration_s, "outputs": [output.name for output in outputs],
        "params": {**params.model_dump(mode="json"), "seed": seed},
    }  # fmt: skip
    path = out_dir / "song.json"
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return OutputFile("song.json", path, "application/json")
