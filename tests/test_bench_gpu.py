"""`python -m bench.gpu.run --tiny`: the GPU benchmark's code, run on tiny configs on the CPU so it cannot rot.

The GPU run itself needs a CUDA machine (bench/gpu/remote.sh); this runs the same code path end to end, in a
subprocess as a user would, and checks that every engine produced its rows and that each row's own check passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.engine
def test_tiny_run_gives_every_engine_its_rows(tmp_path: Path) -> None:
    report_path = tmp_path / "bench-gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu.run", "--tiny", "--json", str(report_path), "--work", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    rows = report["rows"]
    assert report["tiny"] is True and report["environment"]["device"].startswith("cpu")

    separate = [row for row in rows if row["engine"] == "separate" and row["case"].startswith("htdemucs")]
    roformer = [row for row in rows if row["engine"] == "separate" and row["case"] not in {r["case"] for r in separate}]
    names = ["mel-roformer-kim-vocals", "bs-roformer-viperx-1297", "bs-roformer-zfturbo-4stem"]
    assert [row["case"].split(",")[0] for row in roformer] == [name for name in names for _ in range(4)]
    assert all(row["check"].startswith("ok:") and "max |diff| 0.0e+00" in row["check"] for row in roformer)
    models = ["htdemucs (1 model)"] * 4 + ["htdemucs_ft (2 models)"] * 4
    assert [row["case"].split(",")[0] for row in separate] == models
    assert [row["case"].split("batch ")[1].split(" ")[0] for row in separate] == ["1", "2", "4", "8"] * 2
    # The CPU-vs-device check ran on both models (CPU against CPU here, so exactly equal).
    assert all(row["check"].startswith("ok:") and "max |diff| 0.0e+00" in row["check"] for row in separate)

    whisper_row, faster_row = [row for row in rows if row["engine"] == "transcribe"]
    # The decode loop was bounded as scripted: one segment per 30 s window.
    assert whisper_row["check"] == "ok: 2 segments for 2 windows of 8 scripted text tokens each", whisper_row
    # faster-whisper runs the same script through CTranslate2 (int8 on the CPU): a figure, never a skip.
    assert faster_row["check"] == whisper_row["check"], faster_row
    assert faster_row["precision"].startswith("int8") and faster_row["case"].startswith("faster-whisper"), faster_row

    generate = [row for row in rows if row["engine"] == "generate"]
    assert [row["check"] for row in generate] == ["ok: 1 files of [0.512] s", "ok: 4 files of [0.512] s"]

    song = [row for row in rows if row["engine"] == "song"]
    assert [row["check"] for row in song] == ["ok: 1 files of [2.0] s", "ok: 4 files of [2.0] s"]
    assert all(row["unit"] == "generated minute" for row in song)

    timed = separate + roformer + [whisper_row, faster_row] + generate + song
    assert not [row for row in rows if row not in timed], rows  # no error or "cannot run" row
    for row in timed:
        assert row["seconds_per_unit"] > 0 and row["realtime_x"] > 0, row
        assert row["peak_gpu_mib"] is None  # CPU: no GPU memory
        assert row["precision"] == "fp32" or row is faster_row
        assert row["usd_per_unit_a10g_estimate"] is None  # priced only from CUDA measurements
        assert row["case"].endswith("[tiny config]")
    # The printed table carries the same rows.
    assert done.stdout.count("[tiny config]") == len(timed)


def test_faster_whisper_on_cuda_needs_cublas_12_loaded_not_just_ctranslate2_imported() -> None:
    """CTranslate2 answers its device count and compute types without cuBLAS; the row's check loads
    libcublas.so.12 itself, so on a machine without it the row says why instead of failing mid-run."""
    import ctypes

    import torch

    from bench.gpu.run import ctranslate2_cannot_run

    try:
        ctypes.CDLL("libcublas.so.12")
    except OSError:
        pass
    else:
        pytest.fail("this machine has libcublas.so.12: the check below needs a machine without it")
    reason = ctranslate2_cannot_run(torch.device("cuda"))
    assert reason is not None and reason.startswith("ctranslate2 4.8.5 needs libcublas.so.12"), reason
    assert "nvidia-cublas-cu12 is not carried" in reason
