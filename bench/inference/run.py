"""Inference benchmarks: our engines against the libraries called directly, and peak memory on long input.

    python -m bench.inference.run [--only TASK ...] [--minutes 1 20] [--runs 3] [--json results.json]

Every `bench/inference/<task>.py` module exposes `CASES: list[BenchCase]`. For each case this runs, each in a
fresh subprocess (so setup cost stays out of the timing and peak RSS belongs to that one run):
(a) ours and (b) direct on a short input, `--runs` times each (the median is reported), and (c) ours and direct
once each on a long input for peak memory. Setup (model loading) is untimed but counts toward peak memory, as in a
worker. Each run reports wall seconds and the process's CPU seconds (all its threads: onnxruntime and torch use
every core they are given), so costs can be priced on CPU time rather than on the wall clock of a shared VM.
Where a direct side does different work from ours, the case says so and the table prints it under a footnote.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bench.inference
from bench.inference.common import BenchCase

_NOT_CASE_MODULES = {"run", "common"}


@dataclass
class Row:
    case: str
    ours_s_per_min: float
    direct_s_per_min: float | None
    peak_mib_short: float
    peak_mib_long: float | None
    error: str = ""
    ours_cpu_s_per_min: float | None = None
    direct_cpu_s_per_min: float | None = None
    direct_peak_mib_short: float | None = None
    direct_peak_mib_long: float | None = None
    direct_differs: str = ""

    @property
    def ratio(self) -> float | None:
        if self.direct_s_per_min is None or self.direct_s_per_min == 0:
            return None
        return self.ours_s_per_min / self.direct_s_per_min


def discover(only: list[str] | None) -> list[tuple[str, int, BenchCase]]:
    """(module name, index in its CASES, case) for every case, optionally only the named task modules."""
    found = []
    for info in sorted(pkgutil.iter_modules(bench.inference.__path__), key=lambda m: m.name):
        if info.name in _NOT_CASE_MODULES or info.name.startswith("_") or (only and info.name not in only):
            continue
        module = importlib.import_module(f"bench.inference.{info.name}")
        found.extend((info.name, index, case) for index, case in enumerate(getattr(module, "CASES", [])))
    return found


def _worker(module_name: str, index: int, mode: str, input_path: Path, scratch: Path) -> None:
    """Runs in the child: setup (untimed), then one timed call; prints its seconds and this process's peak RSS."""
    case: BenchCase = importlib.import_module(f"bench.inference.{module_name}").CASES[index]
    state = case.setup(scratch / "setup")
    out_dir = scratch / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    call = case.ours if mode == "ours" else case.direct
    start, cpu_start = time.perf_counter(), time.process_time()
    call(state, input_path, out_dir)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": _peak_rss_kib() / 1024}))


def _peak_rss_kib() -> int:
    """This process's own peak RSS. Not ru_maxrss: on Linux it keeps the high-water mark of the process image that
    exec replaced, so every child would report at least the parent's RSS (all bench modules imported)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])  # in kB
    raise RuntimeError("no VmHWM in /proc/self/status: the peak-memory figures need Linux")


def _run_child(module_name: str, index: int, mode: str, input_path: Path, scratch: Path) -> dict[str, float]:
    scratch.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.inference.run", "--worker", module_name, str(index), mode,
               str(input_path), str(scratch)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_case(module_name: str, index: int, case: BenchCase, minutes: tuple[float, float], runs: int,
               work: Path) -> Row:  # fmt: skip
    short_minutes, long_minutes = minutes
    inputs = work / f"{module_name}-{index}"
    inputs.mkdir(parents=True, exist_ok=True)
    short_input = case.make_input(short_minutes, inputs)
    ours = [_run_child(module_name, index, "ours", short_input, inputs / f"ours{i}") for i in range(runs)]
    direct = [_run_child(module_name, index, "direct", short_input, inputs / f"direct{i}") for i in range(runs)]
    peak_long = direct_peak_long = None
    if long_minutes > 0:
        long_input = case.make_input(long_minutes, inputs / "long")
        peak_long = _run_child(module_name, index, "ours", long_input, inputs / "ours-long")["peak_mib"]
        direct_peak_long = _run_child(module_name, index, "direct", long_input, inputs / "direct-long")["peak_mib"]
    return Row(
        case=case.name,
        ours_s_per_min=statistics.median(r["seconds"] for r in ours) / short_minutes,
        direct_s_per_min=statistics.median(r["seconds"] for r in direct) / short_minutes,
        peak_mib_short=statistics.median(r["peak_mib"] for r in ours),
        peak_mib_long=peak_long,
        ours_cpu_s_per_min=statistics.median(r["cpu_seconds"] for r in ours) / short_minutes,
        direct_cpu_s_per_min=statistics.median(r["cpu_seconds"] for r in direct) / short_minutes,
        direct_peak_mib_short=statistics.median(r["peak_mib"] for r in direct),
        direct_peak_mib_long=direct_peak_long,
        direct_differs=case.direct_differs,
    )


def format_table(rows: list[Row], minutes: tuple[float, float]) -> str:
    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def pair(ours: float | None, direct: float | None) -> str:
        return f"{num(ours, 0)} / {num(direct, 0)}"

    short, long = (f"{m:g}" for m in minutes)
    notes = [r for r in rows if r.direct_differs and not r.error]
    header = ["case", "s/audio-min ours", "s/audio-min direct", "ratio", "CPU-s/audio-min ours",
              "CPU-s/audio-min direct", f"peak MiB {short} min ours / direct",
              f"peak MiB {long} min ours / direct"]  # fmt: skip
    body = [
        [r.case + (f" [{notes.index(r) + 1}]" if r in notes else ""), num(r.ours_s_per_min),
         num(r.direct_s_per_min), num(r.ratio, 2), num(r.ours_cpu_s_per_min), num(r.direct_cpu_s_per_min),
         pair(r.peak_mib_short, r.direct_peak_mib_short), pair(r.peak_mib_long, r.direct_peak_mib_long)]
        if not r.error else [r.case, "error: " + r.error, "", "", "", "", "", ""]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in
             [header, *body]]  # fmt: skip
    lines.insert(1, "-+-".join("-" * width for width in widths))
    lines += [f"[{number}] direct side: {r.direct_differs}" for number, r in enumerate(notes, start=1)]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        module_name, index, mode, input_path, scratch = argv[1:6]
        _worker(module_name, int(index), mode, Path(input_path), Path(scratch))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.inference.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="TASK", help="task modules to run, e.g. builtin separate")
    parser.add_argument("--minutes", nargs=2, type=float, default=[1.0, 20.0], metavar=("SHORT", "LONG"),
                        help="input lengths: timed runs, and the peak-memory run (0 skips it)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (median reported)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--work", type=Path, help="folder for inputs and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    minutes = (args.minutes[0], args.minutes[1])
    cases = discover(args.only)
    if not cases:
        parser.error(f"no benchmark cases found for {args.only or 'any task'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-", dir=args.work) as work:
        for module_name, index, case in cases:
            print(f"running {case.name} ...", file=sys.stderr, flush=True)
            try:
                rows.append(bench_case(module_name, index, case, minutes, args.runs, Path(work)))
            except Exception as exc:  # one broken case must not hide the others' results
                rows.append(Row(case.name, float("nan"), None, float("nan"), None, error=str(exc)[:200]))
    print(format_table(rows, minutes))
    if args.json:
        args.json.write_text(json.dumps([vars(r) | {"ratio": r.ratio} for r in rows], indent=2))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
