"""`python -m bench.api.run` in its open-loop mode, for a couple of seconds at a low rate, so the benchmark cannot rot.

It runs as a user would (a subprocess: its own embedded Postgres, the API server process, the local worker) and
checks the table it prints: a row for every operation in both worker modes, each with finite latencies. Nothing
about speed is asserted (that is what the benchmark itself reports).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ("submit-multipart", "submit-json", "get-job")


def test_open_loop_prints_a_row_per_operation_and_worker_mode() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.api.run", "--rates", "4", "--seconds", "1.5", "--users", "2", "--grace", "120"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.split()[:3] == ["code", "workers", "op"])
    assert "DRAINED" in lines[header - 1]  # the table says how the phases were isolated
    rows = {}
    for line in lines[header + 1 :]:
        cells = line.split()
        if len(cells) < 9 or cells[0] != "current":
            break
        rows[(cells[1], cells[2])] = cells
    assert set(rows) == {(workers, op) for workers in ("on", "off") for op in OPERATIONS}
    for cells in rows.values():
        sent, ok, errors, p50, p99 = int(cells[4]), int(cells[5]), int(cells[6]), float(cells[7]), float(cells[8])
        assert sent > 0 and ok == sent and errors == 0
        assert math.isfinite(p50) and math.isfinite(p99) and 0 < p50 <= p99
    assert "highest offered rate with p99 < 50 ms" in done.stdout
