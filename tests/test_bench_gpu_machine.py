"""`python -m bench.gpu.run --tiny` in a stand-in for the benchmark machine's Python: the packages it publishes
(bench/gpu/machine-packages.txt) plus exactly the wheels bench/gpu/remote.sh carries (bench/gpu/wheels.txt, the
same cp312 files), staged the way remote.sh stages them there, and nothing else. A wheel missing from the manifest
fails here, not on the GPU.

What differs from the machine: Python 3.12 from pyenv here (3.12.1; the machine has 3.12.3), no GPU (torch 2.11.0
is the same PyPI build, +cu130 with the machine's cuda-toolkit / nvidia-* cu13 packages, run on the CPU), and the
versions of listed packages the list does not publish (taken from the shared venv's). Only the listed packages that
bench.gpu imports are installed. The environment is cached under
~/.cache/audio-studio/bench-gpu-machine/<hash of its inputs>; the first build downloads ~3.5 GB (torch and its
CUDA libraries).
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench.gpu import wheels

ROOT = Path(__file__).resolve().parents[1]
MACHINE_LIST = ROOT / "bench" / "gpu" / "machine-packages.txt"
# Outside the checkout, like pip's own cache: a fresh clone on the same machine (CI's) reuses the ~6 GB build.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audio-studio" / "bench-gpu-machine"
PYTHON_ENV = "BENCH_GPU_PYTHON"  # a Python 3.12 to build the stand-in with, where pyenv's is not there
# torch with its own dependencies: the machine's CUDA 13 packages, all on its list.
TORCH = "torch==2.11.0"
# The listed packages bench.gpu imports (directly or through a carried wheel), installed without dependencies.
LISTED = (
    "numpy==2.5.2", "transformers==5.17.0", "huggingface-hub==1.33.0", "safetensors==0.8.0", "tokenizers==0.23.2",
    "tiktoken==0.14.0", "sentencepiece==0.2.2", "onnxruntime==1.30.0", "scipy==1.17.1", "numba==0.68.1",
    "llvmlite==0.50.0", "pyyaml==6.0.4", "tqdm==4.70.1", "regex==2026.12.2", "requests==2.34.2", "urllib3==2.8.0",
    "idna==3.21", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "pillow==13.0.0", "httpx==0.28.1",
    "httpcore==1.0.9", "h11==0.16.0", "anyio==4.16.0", "packaging==26.4", "einops==0.8.2",
)  # fmt: skip
SETS = ("ct2", "main")  # in remote.sh's order: ct2 staged by one call, main run by the next (both in /tmp/site there)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _machine_list() -> dict[str, str | None]:
    entries = {}
    for line in MACHINE_LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            entries[_normal(name)] = version or None
    return entries


def _python_3_12() -> str:
    candidates = [
        os.environ.get(PYTHON_ENV, ""),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
    ]
    candidates.append("/usr/bin/python3.12")
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.startswith("Python 3.12."):
            return candidate
    pytest.fail(f"no Python 3.12 (the benchmark machine's) here: tried {candidates}; set {PYTHON_ENV}")


def _build(folder: Path, interpreter: str) -> None:
    venv = folder / "venv"
    python = venv / "bin" / "python"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "--no-deps", *LISTED], check=True)
    env = {**os.environ, "PYTHON": str(python), "PYTHONPATH": str(ROOT)}
    for wheel_set in SETS:  # each set in its own folder, so a run can leave one out
        env["WHEEL_DIR"], env["SITE"] = str(folder / f"whl-{wheel_set}"), str(folder / f"site-{wheel_set}")
        for verb in ("--build", "--stage"):
            subprocess.run(["bash", "bench/gpu/remote.sh", verb, wheel_set], cwd=ROOT, env=env, check=True)


def _environment() -> Path:
    """The cached stand-in, built on first use (atomically: a half-built one is never reused)."""
    interpreter = _python_3_12()
    version = subprocess.run([interpreter, "--version"], capture_output=True, text=True, check=True).stdout
    inputs = [MACHINE_LIST.read_bytes(), wheels.MANIFEST.read_bytes(), (ROOT / "bench/gpu/remote.sh").read_bytes(),
              json.dumps([version, TORCH, LISTED, SETS]).encode(), inspect.getsource(_build).encode()]  # fmt: skip
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()[:16]
    folder = CACHE / key
    if not (folder / "venv" / "bin" / "python").exists():
        building = CACHE / f"{key}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        _build(building, interpreter)
        try:  # everything runs as `venv/bin/python -m`, which finds its prefix from its own path
            building.rename(folder)
        except OSError:  # a concurrent run finished the same environment first
            shutil.rmtree(building)
        for stale in CACHE.iterdir():  # earlier inputs' environments (~6 GB each) and dead builds'
            if stale != folder and not _building_now(stale):
                shutil.rmtree(stale, ignore_errors=True)
    return folder


def _building_now(folder: Path) -> bool:
    """Whether `folder` is a build in progress: `<key>.building-<pid>` of a live process."""
    _, marker, pid = folder.name.partition(".building-")
    if not marker:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def _installed(python: Path, path: str) -> dict[str, str]:
    code = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    done = subprocess.run([str(python), "-c", code], env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def _run(python: Path, path: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """`bench.gpu.run --tiny` with `path` (the staged sets, then the repo) as PYTHONPATH, as remote.sh runs it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = path
    with tempfile.TemporaryDirectory(prefix="bench-gpu-machine-") as work:
        report = Path(work) / "bench-gpu.json"
        done = subprocess.run(
            [str(python), "-m", "bench.gpu.run", "--tiny", "--json", str(report), "--work", work, *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        rows = json.loads(report.read_text())["rows"] if report.exists() else []
    return done, rows


@pytest.mark.engine
def test_tiny_run_in_the_benchmark_machines_environment() -> None:
    folder = _environment()
    python = folder / "venv" / "bin" / "python"
    staged = os.pathsep.join([*(str(folder / f"site-{wheel_set}") for wheel_set in SETS), str(ROOT)])

    # Nothing beyond the machine's list and the carried wheels, at the list's versions where it publishes one.
    listed = _machine_list()
    carried = {_normal(wheel.name): wheel.requirement.split("==")[1] for wheel in wheels.manifest()}
    installed = {_normal(name): version for name, version in _installed(python, staged).items()}
    # The project itself travels as the working tree (ROOT on the path); an editable install leaves its metadata
    # there, which is no package the machine needs.
    installed.pop("audio-studio", None)
    assert not sorted(set(installed) - set(listed) - set(carried)), "installed but neither listed nor carried"
    for name, version in installed.items():
        expected = carried.get(name) or listed.get(name)
        assert expected is None or version.split("+")[0] == expected, (name, version, expected)

    done, rows = _run(python, staged)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    engines = [row["engine"] for row in rows]
    # demucs (2 models) and RoFormer (3 models), each at 4 window batch sizes; both whispers; generate and song x2.
    assert engines == ["separate"] * 20 + ["transcribe"] * 2 + ["generate"] * 2 + ["song"] * 2, rows
    for row in rows:  # every row ran and passed its own check: nothing is missing from the carried sets
        assert row["seconds_per_unit"] > 0 and row["check"].startswith("ok:"), row
    assert rows[21]["case"].startswith("faster-whisper"), rows[21]

    # Set ct2 not staged (the machine went back between the two calls): the row says what is missing and where
    # it travels, and the run still succeeds.
    done, rows = _run(python, os.pathsep.join([str(folder / "site-main"), str(ROOT)]), "--only", "faster-whisper")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [row["note"] for row in rows] == [
        "cannot run: No module named 'ctranslate2' (its wheel travels in set ct2 of bench/gpu/wheels.txt)"
    ]

    # On CUDA the faster-whisper row first loads CUDA 12's cuBLAS as CTranslate2 will: with the machine's cu13
    # packages alone it cannot, and the row says so instead of "ok".
    probe = "import torch; from bench.gpu.run import ctranslate2_cannot_run as c; print(c(torch.device('cuda')))"
    env = {**os.environ, "PYTHONPATH": staged}
    done = subprocess.run([str(python), "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("ctranslate2 4.8.5 needs libcublas.so.12 (CUDA 12 cuBLAS) and none loads here")
    assert "torch here is built for CUDA 13.0" in done.stdout and "581,217,458 bytes" in done.stdout


def test_a_missing_module_row_names_the_wheel_set_that_carries_it() -> None:
    from bench.gpu.run import missing_module

    assert missing_module(ModuleNotFoundError("No module named 'ctranslate2'", name="ctranslate2")) == (
        "No module named 'ctranslate2' (its wheel travels in set ct2 of bench/gpu/wheels.txt)"
    )
    assert missing_module(ModuleNotFoundError("No module named 'x'", name="x")).endswith(
        "(no wheel set in bench/gpu/wheels.txt carries it)"
    )
