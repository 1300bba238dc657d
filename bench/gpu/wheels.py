"""The carried-wheel manifest (bench/gpu/wheels.txt), read by bench/gpu/remote.sh, bench/gpu/run.py and the tests.

python -m bench.gpu.wheels SET    the pinned requirements of one wheel set, one a line
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

MANIFEST = Path(__file__).with_name("wheels.txt")
CUBLAS_12_NOT_CARRIED = (
    "nvidia-cublas-cu12 is not carried: its wheel is 581,217,458 bytes, over the 64 MiB a device call carries "
    "(bench/gpu/wheels.txt)."
)


@dataclass(frozen=True)
class Wheel:
    requirement: str  # name==version
    sets: tuple[str, ...]
    module: str  # the top-level import it provides

    @property
    def name(self) -> str:
        return self.requirement.split("==")[0]


def manifest(path: Path = MANIFEST) -> list[Wheel]:
    wheels = []
    for line in path.read_text().splitlines():
        fields = line.split("#")[0].split()
        if fields:
            requirement, sets, module = fields
            wheels.append(Wheel(requirement, tuple(sets.split(",")), module))
    return wheels


def requirements(wheel_set: str) -> list[str]:
    found = [wheel.requirement for wheel in manifest() if wheel_set in wheel.sets]
    if not found:
        raise SystemExit(f"no wheel set {wheel_set!r} in {MANIFEST}")
    return found


def sets_carrying(module: str) -> list[str]:
    return sorted({name for wheel in manifest() if wheel.module == module for name in wheel.sets})


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
