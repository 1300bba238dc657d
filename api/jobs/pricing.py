"""The one price table (SPEC section 2): credits = max(minimum, ceil(rate x units)).

Units come from `TaskSpec.price_units`: audio minutes for audio tasks, variants x output seconds x steps / default
steps for generation. Quotes, submits and `GET /v1/tasks` all read this table, so a price shown is the price held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel

from inference.registry import TASKS, PriceUnit


@dataclass(frozen=True)
class Rate:
    rate: float  # credits per unit
    unit: PriceUnit
    minimum: int  # credits charged at least, so tiny jobs still cover their start-up cost


# Rough GPU cost per unit, rounded up to whole credits. One credit is about one US cent (see settings' packs).
RATES: dict[str, Rate] = {
    "separate": Rate(rate=4.0, unit="audio_minute", minimum=2),
    "enhance": Rate(rate=1.0, unit="audio_minute", minimum=1),
    "transcribe": Rate(rate=2.0, unit="audio_minute", minimum=1),
    "midi": Rate(rate=1.0, unit="audio_minute", minimum=1),
    "generate": Rate(rate=0.5, unit="variant_second", minimum=2),
    # Songs (ACE-Step 1.5 turbo, 8 steps): per generated minute x variants. Estimate, not yet measured on an A10G: the
    # one public A10G figure is ~3 s per generated minute (../shared/NOTES.md), i.e. ~0.1 US cents of GPU at
    # USD 0.000306/s; a price near the seed studio's "create-song" (5 credits) leaves room for cold starts, VAE
    # decoding of long songs and a margin. docs/COSTS.md says how to measure it (bench/gpu).
    "song": Rate(rate=4.0, unit="song_minute", minimum=2),
    "cover": Rate(rate=4.0, unit="song_minute", minimum=2),
    "repaint": Rate(rate=4.0, unit="song_minute", minimum=2),
    # CPU DSP tasks: a few CPU seconds per audio minute (docs/COSTS.md); one credit covers them with margin.
    "master": Rate(rate=1.0, unit="audio_minute", minimum=1),
    "tune": Rate(rate=1.0, unit="audio_minute", minimum=1),
    "fx": Rate(rate=1.0, unit="audio_minute", minimum=1),
    # A sum of decoded tracks: well under a CPU second per mix minute per track; priced like the other DSP tasks.
    "mixdown": Rate(rate=1.0, unit="output_minute", minimum=1),
}

# Float noise (e.g. 180.00000001 s from a container header) must not tip a price over to the next credit.
_EPSILON = 1e-9


def price(task: str, params: BaseModel, audio_seconds: float | None) -> int:
    """Credits for one job of `task` with validated `params` on `audio_seconds` of input (None for text tasks)."""
    rate = RATES[task]
    units = TASKS[task].price_units(params, audio_seconds)
    return max(rate.minimum, math.ceil(rate.rate * units - _EPSILON))
