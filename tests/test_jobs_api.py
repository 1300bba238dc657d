"""The jobs HTTP surface end to end: real Postgres, real HTTP semantics (ASGI), the local worker pool and the
builtin engines. Every bad input must answer the right 4xx and leave nothing charged or half-written."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from api.jobs.pricing import RATES
from db import jobs as db_jobs
from db import ledger
from inference.builtin import HOLD_UNTIL_ENV
from tests import hostile_audio
from tests.jobs_api_support import multipart, wait_final, wait_status, write_audio
from tests.jobs_support import RefusingDispatcher, wait_until

PROBLEM = "application/problem+json"


async def _balance(app_state: Any, user: dict[str, Any]) -> tuple[int, int]:
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, user["id"])
    return balance.available, balance.held


async def _counts(app_state: Any, user: dict[str, Any]) -> tuple[int, int]:
    async with app_state.pool.connection() as conn:
        jobs = await (await conn.execute("SELECT count(*) FROM jobs WHERE user_id = %s", (user["id"],))).fetchone()
        holds = await (await conn.execute("SELECT count(*) FROM holds WHERE user_id = %s", (user["id"],))).fetchone()
    assert jobs is not None and holds is not None
    return jobs[0], holds[0]


def _stored_inputs(app_state: Any) -> list[Path]:
    root = app_state.settings.state_dir / "files" / app_state.settings.inputs_bucket
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


async def test_tasks_are_public_with_prices_limits_and_licences(client: Any) -> None:
    response = await client.get("/v1/tasks")
    assert response.status_code == 200
    tasks = {item["task"]: item for item in response.json()["data"]}
    assert set(tasks) == {
        "separate", "enhance", "transcribe", "midi", "generate", "master", "tune", "fx", "mixdown", "song", "cover",
        "repaint",
    }  # fmt: skip
    dsp = {"master", "tune", "fx", "mixdown"}
    for name, item in tasks.items():
        assert item["price"] == {"rate": RATES[name].rate, "unit": RATES[name].unit, "minimum": RATES[name].minimum}
        assert item["limits"]["formats"] == ["wav", "flac", "mp3", "ogg", "m4a"]
        assert (item["limits"]["max_channels"], item["limits"]["max_sample_rate"]) == (8, 192000)
        assert item["params_schema"]["type"] == "object"
        # Weighted tasks list their models; DSP tasks list their libraries (with licences) instead.
        assert bool(item["models"]) is (name not in dsp) and bool(item["libraries"]) is (name in dsp), name
    licences = {lib["name"]: lib["licence"] for lib in tasks["master"]["libraries"]}
    assert licences["pedalboard"] == "GPL-3.0-only" and tasks["master"]["extra_inputs"] == ["reference"]
    for item in tasks.values():
        assert all(model["installed"] for model in item["models"]), "builtin engines need no weights"
    models = {model["key"]: model for model in tasks["generate"]["models"]}
    # Local mode allows restricted weights (tests/test_licences.py checks production's refusal).
    assert models["audioldm2"]["enabled"] is True and models["audioldm2"]["restricted"] is True
    assert models["audioldm2"]["commercial_use"] is False
    assert models["stable-audio-open"]["enabled"] is True
    demucs = {model["key"]: model for model in tasks["separate"]["models"]}
    assert demucs["demucs/htdemucs"]["licence_unresolved"] is True
    assert "prompt" in tasks["generate"]["params_schema"]["properties"]
    assert (tasks["mixdown"]["input_kind"], tasks["mixdown"]["price"]["unit"]) == ("tracks", "output_minute")


async def test_quotes_price_without_running(client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path) -> None:
    headers = alice["headers"]
    by_duration = await client.post("/v1/quotes", headers=headers, json={"task": "separate", "duration_s": 120})
    assert by_duration.status_code == 200, by_duration.text
    assert by_duration.json()["credits"] == 8 and by_duration.json()["units"] == 2.0
    tiny = await client.post("/v1/quotes", headers=headers, json={"task": "transcribe", "duration_s": 1})
    assert tiny.json()["credits"] == RATES["transcribe"].minimum
    path = write_audio(tmp_path / "q.flac", 90.0)
    uploaded = await client.post("/v1/quotes", headers=headers, **multipart("separate", {}, path))
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["credits"] == 6 and uploaded.json()["duration_s"] == pytest.approx(90.0, abs=0.01)
    # A FLAC whose header claims 1 s is priced on the 90 s it decodes to.
    spoofed = hostile_audio.flac_claiming(tmp_path / "spoofed.flac", 90.0, hostile_audio.RATE)
    decoded = await client.post("/v1/quotes", headers=headers, **multipart("separate", {}, spoofed))
    assert decoded.status_code == 200, decoded.text
    assert decoded.json()["credits"] == 6 and decoded.json()["duration_s"] == pytest.approx(90.0, abs=0.01)
    generate = await client.post(
        "/v1/quotes",
        headers=headers,
        json={"task": "generate", "prompt": "rain", "params": {"duration_s": 10, "variants": 3}},
    )
    assert generate.json()["credits"] == 15 and generate.json()["sufficient"] is True
    bad = await client.post(
        "/v1/quotes", headers=headers, json={"task": "separate", "params": {"shifts": 99}, "duration_s": 10}
    )
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_params"
    assert await _counts(app_state, alice) == (0, 0)
    assert await _balance(app_state, alice) == (100, 0)


async def test_each_task_runs_to_success_with_downloadable_outputs(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    headers = alice["headers"]
    submits = {
        "separate": multipart("separate", {"two_stems": "vocals"}, write_audio(tmp_path / "s.wav", 2.0, 22050, 2)),
        "enhance": multipart("enhance", {"atten_lim_db": 12}, write_audio(tmp_path / "e.flac", 2.0), "audio/flac"),
        "transcribe": multipart("transcribe", {"model": "tiny"}, write_audio(tmp_path / "t.mp3", 2.0), "audio/mpeg"),
        "midi": multipart("midi", {}, write_audio(tmp_path / "m.ogg", 2.0), "audio/ogg"),
    }
    # JSON body, top-level prompt, and Prefer: wait answering with the finished job.
    generate = await client.post(
        "/v1/jobs",
        headers={**headers, "Prefer": "wait=60"},
        json={"task": "generate", "prompt": "soft rain on a tin roof", "params": {"duration_s": 1.5, "variants": 2}},
    )
    # Submitted first, so no other job is ahead of it: a 1.5 s builtin generate finishes well inside the wait, and
    # the answer is the final job, not a 202 to poll.
    assert generate.status_code == 200, generate.text
    assert generate.headers["preference-applied"] == "wait=60"
    assert generate.json()["status"] == "succeeded" and generate.json()["progress"] == 1.0
    assert {out["name"] for out in generate.json()["outputs"]} == {"variant_1.wav", "variant_2.wav"}
    assert all(out["url"] and out["expires_at"] for out in generate.json()["outputs"])
    created: dict[str, dict[str, Any]] = {"generate": generate.json()}
    assert created["generate"]["params"]["prompt"] == "soft rain on a tin roof"
    for task, kwargs in submits.items():
        response = await client.post("/v1/jobs", headers=headers, **kwargs)
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
        created[task] = response.json()
    m4a = await client.post(
        "/v1/jobs", headers=headers, **multipart("midi", {}, write_audio(tmp_path / "x.m4a", 2.0), "audio/mp4")
    )
    assert m4a.status_code == 202, m4a.text
    created["midi-m4a"] = m4a.json()

    expected = {
        "separate": {"vocals.wav", "no_vocals.wav"},
        "enhance": {"enhanced.wav"},
        "transcribe": {"transcript.json", "transcript.txt", "transcript.srt", "transcript.vtt"},
        "midi": {"notes.mid", "notes.json"},
        "generate": {"variant_1.wav", "variant_2.wav"},
        "midi-m4a": {"notes.mid", "notes.json"},
    }
    total = 0
    for task, job in created.items():
        final = await wait_final(client, headers, job["id"], app_state)
        assert final["status"] == "succeeded", final
        assert {out["name"] for out in final["outputs"]} == expected[task]
        assert final["metrics"]["compute_seconds"] is not None and final["timings"]["finished_at"]
        for out in final["outputs"]:
            assert "ref" not in out
            download = await client.get(out["url"])
            assert download.status_code == 200 and len(download.content) == out["bytes"]
        total += final["cost"]
    assert await _balance(app_state, alice) == (100 - total, 0)
    assert _stored_inputs(app_state) == []  # inputs go when the job is final


def _bad_requests(tmp_path: Path) -> list[tuple[str, dict[str, Any], int, str]]:
    good = write_audio(tmp_path / "good.wav", 1.0)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00not audio at all" * 64)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    long = write_audio(tmp_path / "long.wav", 8.0, rate=2000)  # 32 kB: under the byte cap
    large = write_audio(tmp_path / "large.wav", 4.0, rate=16000)  # 128 kB, over the 100 kB cap set below
    aiff = tmp_path / "clip.aiff"
    import soundfile as sf

    sf.write(str(aiff), [0.1, -0.1] * 800, 8000, format="AIFF")
    spoofed = hostile_audio.flac_claiming(tmp_path / "spoofed.flac", 8.0, hostile_audio.RATE)  # says 1 s
    wide = write_audio(tmp_path / "wide.wav", 0.1, rate=8000, channels=9)
    fast = write_audio(tmp_path / "fast.wav", 0.05, rate=384000)
    return [
        ("undecodable", multipart("midi", {}, garbage, "audio/wav"), 422, "undecodable_audio"),
        ("wrong content type", multipart("midi", {}, good, "text/html"), 415, "unsupported_media_type"),
        ("unsupported container", multipart("midi", {}, aiff, "audio/aiff"), 415, "unsupported_media_type"),
        ("empty file", multipart("midi", {}, empty, "audio/wav"), 422, "empty_file"),
        ("too long", multipart("midi", {}, long, "audio/wav"), 422, "audio_too_long"),
        ("length spoofed in the header", multipart("midi", {}, spoofed, "audio/flac"), 422, "audio_too_long"),
        ("too many channels", multipart("midi", {}, wide, "audio/wav"), 422, "too_many_channels"),
        ("sample rate too high", multipart("midi", {}, fast, "audio/wav"), 422, "sample_rate_too_high"),
        ("too large", multipart("midi", {}, large, "audio/wav"), 413, "payload_too_large"),
        ("bad params", multipart("separate", {"shifts": 99}, good), 422, "invalid_params"),
        ("unknown param", multipart("midi", {"bogus": 1}, good), 422, "invalid_params"),
        (
            "params not json",
            {"data": {"task": "midi", "params": "{nope"}, "files": {"file": ("a.wav", b"x")}},
            422,
            "invalid_request",
        ),
        ("control chars", {"json": {"task": "generate", "prompt": "rain\x07 bell"}}, 422, "invalid_params"),
        ("unknown task", multipart("karaoke", {}, good), 422, "unknown_task"),
        ("missing file", multipart("midi", {}), 422, "missing_input"),
        ("audio for a text task", multipart("generate", {"prompt": "x"}, good), 422, "unexpected_input"),
        (
            "bad webhook",
            {"json": {"task": "generate", "prompt": "x", "webhook_url": "ftp://example.com/h"}},
            422,
            "invalid_webhook_url",
        ),
        (
            "bad webhook events",
            {
                "json": {
                    "task": "generate",
                    "prompt": "x",
                    "webhook_url": "https://example.com/h",
                    "webhook_events": ["job.exploded"],
                }
            },
            422,
            "invalid_webhook_events",
        ),
        (
            "text body",
            {"content": b"task=midi", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
    ]


async def test_bad_inputs_answer_4xx_and_leave_nothing(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.settings.max_duration_seconds = 5.0
    app_state.settings.max_upload_bytes = 100_000
    for name, kwargs, status, code in _bad_requests(tmp_path):
        headers = {**alice["headers"], **kwargs.pop("headers", {})}
        response = await client.post("/v1/jobs", headers=headers, **kwargs)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == PROBLEM, name
        assert response.json()["code"] == code, (name, response.json())
    assert await _balance(app_state, alice) == (100, 0)
    assert await _counts(app_state, alice) == (0, 0)
    assert _stored_inputs(app_state) == []


async def test_streamed_upload_without_length_is_capped(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    app_state.settings.max_upload_bytes = 50_000
    boundary = "studio-boundary"

    async def body() -> Any:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\nmidi\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for _ in range(100):  # 1.6 MB announced by no Content-Length: the cap must stop it while streaming
            yield b"\x00" * 16384
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(
        "/v1/jobs",
        headers={**alice["headers"], "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert await _counts(app_state, alice) == (0, 0)


async def test_insufficient_credits_is_402_with_amounts(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    async with app_state.pool.connection() as conn:
        await ledger.adjust(conn, alice["id"], "drain", -99)
    response = await client.post(
        "/v1/jobs", headers=alice["headers"], **multipart("separate", {}, write_audio(tmp_path / "a.wav", 1.0))
    )
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["code"] == "insufficient_credits" and body["required"] == 2 and body["available"] == 1
    assert await _balance(app_state, alice) == (1, 0)
    assert await _counts(app_state, alice) == (0, 0)
    assert _stored_inputs(app_state) == []


async def test_other_users_jobs_are_not_found(
    client: Any, alice: dict[str, Any], bob: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0  # keep it queued: nothing to run
    created = await client.post("/v1/jobs", headers=alice["headers"], json={"task": "generate", "prompt": "hum"})
    job_id = created.json()["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", f"/v1/jobs/{uuid4()}"),
    ):
        response = await client.request(method, path, headers=bob["headers"])
        assert response.status_code == 404 and response.json()["code"] == "job_not_found", (method, path)
    listed = await client.get("/v1/jobs", headers=bob["headers"])
    assert listed.json()["data"] == []
    mine = await client.get(f"/v1/jobs/{job_id}", headers=alice["headers"])
    assert mine.status_code == 200 and mine.json()["status"] == "queued"
    assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 401


async def test_list_is_newest_first_with_cursor_and_filters(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    ids = []
    async with app_state.pool.connection() as conn:
        for index, (task, status) in enumerate(
            [
                ("midi", "succeeded"),
                ("enhance", "failed"),
                ("midi", "queued"),
                ("generate", "succeeded"),
                ("midi", "succeeded"),
            ]
        ):
            job_id = uuid4()
            await db_jobs.insert_job(
                conn,
                job_id=job_id,
                user_id=alice["id"],
                task=task,
                params={},
                model_key="m",
                cost=1,
                input_ref=None,
                input_meta={},
                webhook_url=None,
                webhook_events=None,
                deadline_at=app_state.clock() + timedelta(hours=1),
            )
            await conn.execute(
                "UPDATE jobs SET status = %s, created_at = now() + make_interval(secs => %s) WHERE id = %s",
                (status, index, job_id),
            )
            ids.append(str(job_id))
    seen, cursor = [], None
    for _ in range(3):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", headers=alice["headers"], params=params)).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
    assert seen == ids[::-1] and cursor is None
    midi = (await client.get("/v1/jobs", headers=alice["headers"], params={"task": "midi"})).json()["data"]
    assert [job["id"] for job in midi] == [ids[4], ids[2], ids[0]]
    done = (
        await client.get("/v1/jobs", headers=alice["headers"], params={"status": "succeeded", "task": "midi"})
    ).json()["data"]
    assert [job["id"] for job in done] == [ids[4], ids[0]]
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "garbage!"}, {"status": "done"}):
        response = await client.get("/v1/jobs", headers=alice["headers"], params=bad)
        assert response.status_code == 422, bad


async def test_cancel_queued_releases_the_hold_at_once(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    created = await client.post(
        "/v1/jobs", headers=alice["headers"], **multipart("separate", {}, write_audio(tmp_path / "a.wav", 61.0, 8000))
    )
    job = created.json()
    assert job["status"] == "queued" and await _balance(app_state, alice) == (100 - job["cost"], job["cost"])
    assert len(_stored_inputs(app_state)) == 1
    canceled = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice["headers"])
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert await _balance(app_state, alice) == (100, 0)
    assert _stored_inputs(app_state) == []
    again = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice["headers"])
    assert again.status_code == 409 and again.json()["code"] == "job_final"
    async with app_state.pool.connection() as conn:
        assert await ledger.invariant_violations(conn) == []


async def test_cancel_running_job_ends_canceled_and_released(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The builtin engine holds at its first progress report until a file that this test never creates exists:
    # the job stays running, and only the cancel (raised at a progress report) can end it.
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(tmp_path / "never-released"))
    path = write_audio(tmp_path / "clip.wav", 1.0)
    created = await client.post("/v1/jobs", headers=alice["headers"], **multipart("enhance", {}, path))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    await wait_status(app_state, job_id, "running")
    canceled = await client.post(f"/v1/jobs/{job_id}/cancel", headers=alice["headers"])
    assert canceled.status_code == 202, canceled.text
    assert canceled.json()["cancel_requested"] is True
    final = await wait_final(client, alice["headers"], job_id, app_state)
    assert final["status"] == "canceled" and final["outputs"] == []
    assert await _balance(app_state, alice) == (100, 0)


async def test_prefer_wait_answers_202_after_its_n_seconds_while_the_job_still_runs(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine holds at its first progress report until `release` exists: the job cannot finish inside the wait.
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(release))
    assert app_state.settings.prefer_wait_max_seconds >= 30  # a server ignoring N would wait far past 1 s
    path = write_audio(tmp_path / "clip.wav", 1.0)
    started = time.monotonic()
    async with asyncio.timeout(20):  # a loose upper bound only: wait=1 must not become the server's maximum
        created = await client.post(
            "/v1/jobs", headers={**alice["headers"], "Prefer": "wait=1"}, **multipart("enhance", {}, path)
        )
    waited = time.monotonic() - started
    assert created.status_code == 202, created.text
    assert created.headers["preference-applied"] == "wait=1"
    assert created.headers["location"] == created.json()["links"]["self"]
    job = created.json()
    assert job["status"] in ("queued", "running") and job["outputs"] == []
    assert waited >= 1.0  # it did wait its second (a lower bound on a monotonic clock cannot flake)
    # Still held, so the 202 was not a finished job misreported: release it and it runs to the end.
    row = (await client.get(f"/v1/jobs/{job['id']}", headers=alice["headers"])).json()
    assert row["status"] in ("queued", "running")
    release.touch()
    final = await wait_final(client, alice["headers"], job["id"], app_state)
    assert final["status"] == "succeeded"


async def test_prefer_wait_ends_when_the_job_does(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job is held until it is running, then released: the answer (wait=60) must be the finished job, 200.
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(release))
    path = write_audio(tmp_path / "clip.wav", 1.0)
    submit = asyncio.create_task(
        client.post("/v1/jobs", headers={**alice["headers"], "Prefer": "wait=60"}, **multipart("enhance", {}, path))
    )
    async with app_state.pool.connection() as conn:
        await wait_until(lambda: _job_running(conn), what="the held job to run")
    assert not submit.done()  # still waiting on a running job
    release.touch()
    async with asyncio.timeout(30):
        created = await submit
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "succeeded" and created.json()["outputs"]


async def _job_running(conn: Any) -> bool:
    cursor = await conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'")
    row = await cursor.fetchone()
    return row is not None and row[0] == 1


async def test_dispatch_failure_is_503_and_releases_the_hold(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.dispatcher = RefusingDispatcher()
    response = await client.post(
        "/v1/jobs", headers=alice["headers"], **multipart("midi", {}, write_audio(tmp_path / "a.wav", 1.0))
    )
    assert response.status_code == 503 and response.json()["code"] == "dispatch_failed"
    assert response.headers["retry-after"]
    job = await client.get(f"/v1/jobs/{response.json()['job_id']}", headers=alice["headers"])
    assert job.json()["status"] == "failed" and job.json()["error"]["code"] == "dispatch_failed"
    assert await _balance(app_state, alice) == (100, 0)
    assert _stored_inputs(app_state) == []
    async with app_state.pool.connection() as conn:
        hold = await (await conn.execute("SELECT state FROM holds")).fetchone()
    assert hold == ("released",)


async def test_webhook_settings_are_kept_on_the_job(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    response = await client.post(
        "/v1/jobs",
        headers=alice["headers"],
        json={
            "task": "generate",
            "params": {"prompt": "birds"},
            "webhook_url": "https://hooks.example.com/studio",
            "webhook_events": ["job.succeeded", "job.canceled", "job.succeeded"],
        },
    )
    assert response.status_code == 202, response.text
    assert response.json()["webhook"] == {
        "url": "https://hooks.example.com/studio",
        "events": ["job.succeeded", "job.canceled"],
        "last_delivery": None,
    }
    # Kept on the job: a later GET and the job list show the same settings.
    job_id = response.json()["id"]
    fetched = await client.get(f"/v1/jobs/{job_id}", headers=alice["headers"])
    assert fetched.status_code == 200 and fetched.json()["webhook"] == response.json()["webhook"]
    [listed] = (await client.get("/v1/jobs", headers=alice["headers"])).json()["data"]
    assert listed["id"] == job_id and listed["webhook"] == response.json()["webhook"]
