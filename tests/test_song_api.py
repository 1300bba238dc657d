"""song, cover and repaint end to end through the HTTP API with the real engine: a tiny random AceStepPipeline
installed by `studio models pull` from a lock that pins its files (sha256 and size), then quoted, held, run by the
local worker pool and charged. Bad lyrics and params answer 422 with nothing charged (checked by the API before any
engine: the builtin engines serve those tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from api.jobs.pricing import price
from db import ledger
from inference.models import LOCK_ENV, pull
from inference.params import CoverParams, RepaintParams, SongParams
from tests.jobs_api_support import wait_final
from tests.tiny_ace_step import ACE_STEP_RATE, build_ace_step, lock_pinning_folder, served_folder

LYRICS = "[verse]\nhello world we sing tonight\n[chorus]\nla la la"
PROBLEM = "application/problem+json"


@pytest.fixture
def song_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny pipeline served over HTTP and pulled into a weights folder through models.lock, as real weights are.
    The lock is set in the environment before the app starts, so the API and its spawned workers both read it."""
    source = build_ace_step(tmp_path / "hub" / "ace-step-1.5")
    with served_folder(source) as hub:
        monkeypatch.setenv(LOCK_ENV, str(lock_pinning_folder(tmp_path / "models.lock", source, hub)))
        [pulled] = pull(["ace-step-1.5"], tmp_path / "weights")
    assert pulled.state == "present"
    return tmp_path / "weights"


async def _balance(app_state: Any, user: dict[str, Any]) -> tuple[int, int]:
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, user["id"])
    return balance.available, balance.held


async def _download(client: Any, job: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for output in job["outputs"]:
        path = tmp_path / job["id"] / output["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((await client.get(output["url"])).content)
        paths[output["name"]] = path
    return paths


def _input_song(path: Path, seconds: float = 2.0) -> Path:
    t = np.arange(round(seconds * ACE_STEP_RATE)) / ACE_STEP_RATE
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(1).standard_normal(t.size)
    sf.write(path, np.stack([left, 0.6 * left], axis=1), ACE_STEP_RATE, subtype="PCM_16")
    return path


@pytest.mark.engine
class TestWithTheRealSongEngine:
    @pytest.fixture
    def settings(self, settings: Any, song_weights: Path) -> Any:
        return settings.model_copy(update={"engines": "real", "weights_dir": song_weights})

    async def test_song_is_quoted_charged_and_reproducible_from_its_record(
        self, client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
    ) -> None:
        params = {"lyrics": LYRICS, "duration_s": 1.5, "variants": 2, "steps": 4, "seed": 9, "key": "C major"}
        body = {"task": "song", "prompt": "upbeat synth pop", "params": params}
        quote = await client.post("/v1/quotes", headers=alice["headers"], json=body)
        assert quote.status_code == 200, quote.text
        expected = price("song", SongParams(prompt="x", duration_s=1.5, variants=2, steps=4), None)
        assert quote.json()["credits"] == expected

        created = await client.post("/v1/jobs", headers=alice["headers"], json=body)
        assert created.status_code == 202, created.text
        assert created.json()["cost"] == expected
        job = await wait_final(client, alice["headers"], created.json()["id"], app_state, rounds=120)
        assert job["status"] == "succeeded", job
        files = await _download(client, job, tmp_path)
        assert set(files) == {"variant_1.wav", "variant_2.wav", "song.json"}
        assert sf.info(files["variant_1.wav"]).frames == round(1.5 * ACE_STEP_RATE)
        record = json.loads(files["song.json"].read_text())
        assert record["params"]["lyrics"] == LYRICS and record["seed"] == 9 and record["model"] == "ace-step-1.5"
        assert await _balance(app_state, alice) == (100 - expected, 0)

        # The record's params, submitted again, give the same song.
        again = await client.post(
            "/v1/jobs", headers=alice["headers"], json={"task": "song", "params": record["params"]}
        )
        assert again.status_code == 202, again.text
        rerun = await wait_final(client, alice["headers"], again.json()["id"], app_state, rounds=120)
        rerun_files = await _download(client, rerun, tmp_path)
        assert np.array_equal(sf.read(files["variant_2.wav"])[0], sf.read(rerun_files["variant_2.wav"])[0])

    async def test_cover_and_repaint_run_on_an_uploaded_song(
        self, client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
    ) -> None:
        song = _input_song(tmp_path / "input.wav")
        jobs = {}
        for task, params in (
            (
                "cover",
                {"prompt": "heavy rock", "lyrics": LYRICS, "strength": 0.7, "seed": 2, "steps": 2, "variants": 2},
            ),
            ("repaint", {"start_s": 0.5, "end_s": 1.25, "lyrics": "[verse]\nnew words", "seed": 4, "steps": 2}),
        ):
            form = {"task": task, "params": json.dumps(params)}
            files = {"file": ("input.wav", song.read_bytes(), "audio/wav")}
            created = await client.post("/v1/jobs", headers=alice["headers"], data=form, files=files)
            assert created.status_code == 202, created.text
            model = CoverParams if task == "cover" else RepaintParams
            assert created.json()["cost"] == price(task, model.model_validate(params), 2.0)
            job = await wait_final(client, alice["headers"], created.json()["id"], app_state, rounds=120)
            assert job["status"] == "succeeded", job
            jobs[task] = await _download(client, job, tmp_path)

        assert set(jobs["cover"]) == {"variant_1.wav", "variant_2.wav", "song.json"}
        assert sf.info(jobs["cover"]["variant_1.wav"]).frames == 2 * ACE_STEP_RATE
        assert set(jobs["repaint"]) == {"repainted.wav", "song.json"}
        source = sf.read(song, always_2d=True)[0]
        repainted = sf.read(jobs["repaint"]["repainted.wav"], always_2d=True)[0]
        start, end = round(0.5 * ACE_STEP_RATE), round(1.25 * ACE_STEP_RATE)
        outside = np.r_[0:start, end : len(source)]
        assert np.max(np.abs(repainted[outside] - source[outside])) <= 2.0**-23  # the input, to one 24-bit step
        assert np.mean(np.abs(repainted[start + 40 : end - 40] - source[start + 40 : end - 40])) > 0.01


BAD = [
    ("song", {"prompt": "pop", "lyrics": "[verse]\nring \x07 bell"}),
    ("song", {"prompt": "pop", "lyrics": "\u202eevil"}),  # a bidi override
    ("song", {"prompt": "pop", "lyrics": "la " * 1366}),  # 4,098 characters
    ("song", {"prompt": "pop", "duration_s": 601}),
    ("song", {"prompt": "pop", "bpm": 10}),
    ("song", {"prompt": "pop", "key": "H major"}),
    ("song", {"prompt": "pop", "time_signature": "5"}),
    ("song", {"prompt": "pop", "variants": 5}),
    ("song", {"prompt": "pop", "steps": 0}),
    ("song", {"prompt": "   "}),
    ("song", {"lyrics": LYRICS}),  # no style prompt
    ("song", {"prompt": "pop", "vocal_language": "english"}),
    ("cover", {"prompt": "rock", "strength": 1.5}),
    ("cover", {"strength": 0.5}),  # no style prompt
    ("repaint", {"start_s": 1.0, "end_s": 0.5}),
    ("repaint", {"start_s": 0.5}),  # no end
]


async def test_bad_lyrics_and_params_are_422_and_nothing_is_charged(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    song = _input_song(tmp_path / "input.wav")
    for task, params in BAD:
        for path in ("/v1/quotes", "/v1/jobs"):
            if task == "song":
                response = await client.post(path, headers=alice["headers"], json={"task": task, "params": params})
            else:
                files = {"file": ("input.wav", song.read_bytes(), "audio/wav")}
                form = {"task": task, "params": json.dumps(params)}
                response = await client.post(path, headers=alice["headers"], data=form, files=files)
            assert response.status_code == 422, (task, params, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.json()["code"] == "invalid_params", (task, params)
    assert await _balance(app_state, alice) == (100, 0)
    async with app_state.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM jobs WHERE user_id = %s", (alice["id"],))).fetchone()
    assert row == (0,)


async def test_params_that_do_not_fit_the_input_are_422_before_any_hold(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    song = _input_song(tmp_path / "input.wav", seconds=2.0)
    cases = [({"start_s": 1.0, "end_s": 2.5}, {}, "span_outside_input"),
             ({"start_s": 1.0, "end_s": 2.5}, {"duration_s": "2"}, "span_outside_input"),  # a quote by duration
             ({"start_s": 1.0, "end_s": 1.5}, {"duration_s": "601"}, "input_too_long")]  # fmt: skip
    for params, quote_fields, code in cases:
        form = {"task": "repaint", "params": json.dumps(params), **quote_fields}
        for path in ("/v1/quotes",) if quote_fields else ("/v1/quotes", "/v1/jobs"):
            files = None if quote_fields else {"file": ("input.wav", song.read_bytes(), "audio/wav")}
            response = await client.post(path, headers=alice["headers"], data=form, files=files)
            assert response.status_code == 422, (path, params, response.text)
            assert response.json()["code"] == code
    assert await _balance(app_state, alice) == (100, 0)
    root = app_state.settings.state_dir / "files" / app_state.settings.inputs_bucket
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]  # nothing stored


async def test_lyrics_keep_line_breaks_tabs_and_joiners(client: Any, alice: dict[str, Any]) -> None:
    lyrics = "[verse]\r\n\tmi\u200cxed\n[chorus]\nla"
    body = {"task": "song", "prompt": "pop", "params": {"lyrics": lyrics}}
    created = await client.post("/v1/jobs", headers=alice["headers"], json=body)
    assert created.status_code == 202, created.text
    assert created.json()["params"]["lyrics"] == "[verse]\n\tmi\u200cxed\n[chorus]\nla"  # CRLF made LF
