"""The shape of one inference benchmark case; `bench/inference/run.py` discovers `CASES` in sibling modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchCase:
    name: str  # e.g. "separate demucs_unittest"
    setup: Callable[[Path], Any]  # builds or loads the model once (untimed); gets a scratch folder
    ours: Callable[[Any, Path, Path], None]  # (state, input file, out dir): our engine's run
    direct: Callable[[Any, Path, Path], None]  # the library called directly on the same model and input
    make_input: Callable[[float, Path], Path]  # (minutes, folder) -> an input file of that length
