"""The licence gate (issue 19 item 9, SPEC section 1): one rule for every task, read from models.lock's rows.
Weights that are non-commercial (`commercial_use = false`) or restricted (a `restriction`, e.g. a revenue cap) are
refused in production with a 422 before any hold unless the operator allows them; local mode allows them; the
worker refuses them too; `GET /v1/tasks` shows each model's terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.settings import Settings
from api.storage import LocalStorage
from api.worker.runner import WorkerContext, run_job
from db import ledger
from inference.models import load_lock
from tests.jobs_api_support import multipart, write_audio
from tests.jobs_support import job_row, ledger_kinds, make_job, make_user, write_tone

RESTRICTED = {
    "demucs/htdemucs",
    "demucs/htdemucs_ft",
    "demucs/htdemucs_6s",
    "roformer/bs-roformer-viperx-1297",
    "roformer/bs-roformer-zfturbo-4stem",
    "stable-audio-open",
    "audioldm2",
    "ace-step-1.5",
}


def _models(tasks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {model["key"]: model for task in tasks["data"] for model in task["models"]}


def test_production_is_the_modal_dispatcher_and_refuses_restricted_weights_unless_allowed() -> None:
    local = Settings(dispatcher="local")
    production = Settings(dispatcher="modal")
    assert (local.production, local.restricted_models_allowed) == (False, True)
    assert (production.production, production.restricted_models_allowed) == (True, False)
    assert Settings(dispatcher="modal", allow_noncommercial_models=True).restricted_models_allowed is True
    assert Settings(dispatcher="local", allow_noncommercial_models=False).restricted_models_allowed is False


def test_modal_app_deploys_a_production_that_refuses_restricted_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import modal_app

    for key, value in modal_app.PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)
    deployed = Settings()
    assert deployed.production and not deployed.restricted_models_allowed
    assert deployed.transcribe_model == "faster-whisper/large-v3-turbo"


def test_the_lock_marks_restricted_rows_with_their_terms_and_source() -> None:
    lock = load_lock()
    assert {key for key, entry in lock.models.items() if entry.restricted} == RESTRICTED
    for key in RESTRICTED:
        entry = lock.get(key)
        assert entry.restriction and entry.licence_url.startswith("https://"), key
    assert lock.get("stable-audio-open").commercial_use is True  # commercial, but capped:
    assert "USD 1M" in lock.get("stable-audio-open").restriction
    assert "scientific purposes" in lock.get("demucs/htdemucs").restriction


def test_a_new_lock_row_is_gated_without_code_changes(tmp_path: Path) -> None:
    lock_path = tmp_path / "models.lock"
    lock_path.write_text(
        'version = 1\n[models."x/capped"]\ntask = "separate"\nsource = "https://example.com/"\nlicence = "Custom"\n'
        'commercial_use = true\nrestriction = "Free under USD 1M revenue."\nlicence_url = "https://example.com/l"\n'
        '[models."x/clean"]\ntask = "separate"\nsource = "https://example.com/"\nlicence = "MIT"\n'
        "commercial_use = true\n"
    )
    lock = load_lock(lock_path)
    assert lock.get("x/capped").restricted and not lock.get("x/clean").restricted
    assert lock.get("x/capped").licence_url == "https://example.com/l"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A production deployment's gate on the test's local collaborators (STUDIO_DISPATCHER=modal is what decides)."""
    return settings.model_copy(update={"dispatcher": "modal"})


async def test_production_refuses_restricted_weights_before_any_hold_and_shows_their_terms(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    models = _models((await client.get("/v1/tasks")).json())
    assert {key for key, model in models.items() if model["restricted"]} == RESTRICTED
    assert {key for key, model in models.items() if not model["enabled"]} == RESTRICTED
    sao = models["stable-audio-open"]
    assert sao["commercial_use"] is True and "USD 1M" in sao["restriction"]
    assert sao["licence_url"] == "https://stability.ai/license"
    assert models["faster-whisper/tiny.en"]["enabled"] and not models["faster-whisper/tiny.en"]["restricted"]

    audio = write_audio(tmp_path / "song.wav", seconds=1.0)
    refusals = [
        await client.post(
            "/v1/jobs", headers=alice["headers"], **multipart("separate", {"model": "htdemucs"}, audio, "audio/wav")
        ),
        await client.post("/v1/jobs", headers=alice["headers"], json={"task": "generate", "prompt": "rain on a roof"}),
        await client.post(
            "/v1/jobs",
            headers=alice["headers"],
            json={"task": "generate", "params": {"model": "audioldm2", "prompt": "rain"}},
        ),
    ]
    for response, key in zip(refusals, ["demucs/htdemucs", "stable-audio-open", "audioldm2"], strict=True):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert (problem["code"], problem["model"]) == ("model_not_enabled", key)
        assert "STUDIO_ALLOW_NONCOMMERCIAL_MODELS" in problem["detail"] and problem["licence_url"]
    credits = (await client.get("/v1/credits", headers=alice["headers"])).json()
    assert (credits["available"], credits["held"]) == (app_state.settings.welcome_credits, 0)
    assert (await client.get("/v1/jobs", headers=alice["headers"])).json()["data"] == []
    async with app_state.pool.connection() as conn:
        assert await ledger.invariant_violations(conn) == []

    # A commercially clean model on the same deployment is accepted.
    accepted = await client.post("/v1/jobs", headers=alice["headers"], **multipart("midi", {}, audio, "audio/wav"))
    assert accepted.status_code == 202, accepted.text

    # The operator's explicit setting opens them.
    app_state.settings = app_state.settings.model_copy(update={"allow_noncommercial_models": True})
    assert all(model["enabled"] for model in _models((await client.get("/v1/tasks")).json()).values())
    response = await client.post("/v1/jobs", headers=alice["headers"], **multipart("separate", {}, audio, "audio/wav"))
    assert response.status_code == 202, response.text


async def test_local_mode_allows_restricted_weights(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.settings = app_state.settings.model_copy(update={"dispatcher": "local"})
    assert all(model["enabled"] for model in _models((await client.get("/v1/tasks")).json()).values())
    audio = write_audio(tmp_path / "song.wav", seconds=1.0)
    response = await client.post("/v1/jobs", headers=alice["headers"], **multipart("separate", {}, audio, "audio/wav"))
    assert response.status_code == 202, response.text


async def test_the_worker_refuses_a_restricted_model_queued_before_the_setting_changed(
    conn: psycopg.AsyncConnection, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    storage = LocalStorage(settings.state_dir / "files", "test-signing-key", "http://testserver")

    async def connect() -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(database_url, autocommit=True)

    ctx = WorkerContext(settings=settings, connect=connect, storage=storage, heartbeat_interval=0.02)
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, write_tone(tmp_path / "t.wav", seconds=0.5), task="separate")
    await conn.execute("UPDATE jobs SET model_key = 'demucs/htdemucs' WHERE id = %s", (job_id,))

    assert await run_job(ctx, job_id) == "failed"
    job = await job_row(conn, job_id)
    assert job["error"]["code"] == "model_not_enabled"
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
