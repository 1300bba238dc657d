"""`separate` with the default RoFormer model end to end through the API: real engines, a tiny checkpoint in the
published MSST format installed the way real weights are (models.lock pins, `pull` over HTTP, sha256 checked), a
real upload, the local worker pool, downloadable stems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from api.jobs.request import _lock_entries_at
from api.settings import Settings
from inference.params import DEFAULT_SEPARATE_MODEL, separate_model_key
from tests.jobs_api_support import multipart, wait_final
from tests.tiny_roformer import install_tiny

DEFAULT_KEY = separate_model_key(DEFAULT_SEPARATE_MODEL)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Real engines, and the default separation model installed from a lock that pins a tiny checkpoint for it."""
    real = settings.model_copy(update={"engines": "real"})
    lock = tmp_path / "models.lock"
    install_tiny(real.weights_path, lock, [DEFAULT_KEY])
    monkeypatch.setenv("STUDIO_MODELS_LOCK", str(lock))
    _lock_entries_at.cache_clear()
    yield real
    _lock_entries_at.cache_clear()


async def test_default_separate_runs_end_to_end_with_the_roformer_engine(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    tasks = {item["task"]: item for item in (await client.get("/v1/tasks")).json()["data"]}
    (model,) = tasks["separate"]["models"]
    assert model["key"] == DEFAULT_KEY and model["installed"] is True
    assert tasks["separate"]["params_schema"]["properties"]["model"]["default"] == DEFAULT_SEPARATE_MODEL

    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    mix = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32)
    song = tmp_path / "song.flac"
    sf.write(song, mix, rate)

    response = await client.post("/v1/jobs", headers=alice["headers"], **multipart("separate", {}, song, "audio/flac"))
    assert response.status_code == 202, response.text
    job = await wait_final(client, alice["headers"], response.json()["id"], app_state)
    assert job["status"] == "succeeded", job
    assert job["params"]["model"] == DEFAULT_SEPARATE_MODEL
    outputs = {out["name"]: out for out in job["outputs"]}
    assert set(outputs) == {"vocals.wav", "instrumental.wav"}
    stems = {}
    for name, out in outputs.items():
        download = await client.get(out["url"])
        assert download.status_code == 200, download.text
        path = tmp_path / name
        path.write_bytes(download.content)
        stems[name], stem_rate = sf.read(path, dtype="float32")
        assert stem_rate == rate and stems[name].shape == mix.shape
    # The two stems add back up to the mix (16-bit WAV outputs, FLAC input: quantisation tolerance).
    assert np.allclose(stems["vocals.wav"] + stems["instrumental.wav"], mix, atol=1e-3)
