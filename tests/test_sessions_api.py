"""Sessions over real HTTP on the embedded Postgres: create, list, rename, delete; tracks pointing at job outputs
(add one or all, update, remove); caps; outputs past retention read as expired; RLS on both tables."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.background.reaper import clean_retention
from api.routes.sessions import MAX_SESSIONS_PER_USER, MAX_TRACKS_PER_SESSION
from tests.auth_support import assert_problem
from tests.jobs_api_support import multipart, wait_final, write_audio


async def finished_job(client: Any, user: dict[str, Any], app_state: Any, task: str, path: Path | None,
                       params: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    submitted = await client.post("/v1/jobs", headers=user["headers"], **multipart(task, params or {}, path))
    assert submitted.status_code == 202, submitted.text
    job = await wait_final(client, user["headers"], submitted.json()["id"], app_state)
    assert job["status"] == "succeeded", job
    return job


async def new_session(client: Any, user: dict[str, Any], name: str = "Demo") -> dict[str, Any]:
    response = await client.post("/v1/sessions", json={"name": name}, headers=user["headers"])
    assert response.status_code == 201, response.text
    return response.json()


async def test_session_lifecycle_with_tracks_from_a_separation(client, alice, app_state, tmp_path):
    job = await finished_job(
        client, alice, app_state, "separate", write_audio(tmp_path / "s.wav", 2.0, 22050, 2), {"model": "htdemucs"}
    )  # four stems
    session = await new_session(client, alice, "  Beat  ")
    assert session["name"] == "Beat" and session["tracks"] == [] and session["track_count"] == 0

    # output null: every audio output (all four stems)
    added = await client.post(f"/v1/sessions/{session['id']}/tracks", json={"job_id": job["id"]},
                              headers=alice["headers"])  # fmt: skip
    assert added.status_code == 201, added.text
    tracks = added.json()["tracks"]
    assert [track["output"] for track in tracks] == [out["name"] for out in job["outputs"]]
    assert [track["position"] for track in tracks] == [0, 1, 2, 3]
    for track in tracks:
        assert track["status"] == "ready" and track["url"] and abs(track["duration_ms"] - 2000) <= 5
        assert (track["offset_ms"], track["gain_db"], track["pan"], track["mute"], track["solo"]) == (0, 0, 0, 0, 0)
    fetched = await client.get(tracks[0]["url"])
    assert fetched.status_code == 200 and fetched.content[:4] == b"RIFF"

    settings = {"output": "drums.wav", "name": "Drums 2", "offset_ms": 1500, "gain_db": -6, "pan": -0.5,
                "trim_in_ms": 100, "trim_out_ms": 900, "parent_track_id": tracks[0]["id"]}  # fmt: skip
    one = (
        await client.post(
            f"/v1/sessions/{session['id']}/tracks", headers=alice["headers"], json={"job_id": job["id"], **settings}
        )
    ).json()["tracks"]
    assert len(one) == 1 and one[0]["name"] == "Drums 2" and one[0]["position"] == 4
    assert (one[0]["offset_ms"], one[0]["gain_db"], one[0]["pan"]) == (1500, -6, -0.5)
    assert (one[0]["trim_in_ms"], one[0]["trim_out_ms"], one[0]["parent_track_id"]) == (100, 900, tracks[0]["id"])

    patched = await client.patch(f"/v1/sessions/{session['id']}/tracks/{one[0]['id']}", headers=alice["headers"],
                                 json={"offset_ms": 250, "mute": True, "solo": True, "trim_out_ms": None})  # fmt: skip
    assert patched.status_code == 200, patched.text
    assert (patched.json()["offset_ms"], patched.json()["mute"], patched.json()["trim_out_ms"]) == (250, True, None)
    assert patched.json()["pan"] == -0.5  # unsent fields keep their value

    renamed = await client.patch(f"/v1/sessions/{session['id']}", json={"name": "Song"}, headers=alice["headers"])
    assert renamed.json()["name"] == "Song" and renamed.json()["track_count"] == 5
    listed = (await client.get("/v1/sessions", headers=alice["headers"])).json()["sessions"]
    assert [(entry["id"], entry["track_count"]) for entry in listed] == [(session["id"], 5)]

    removed = await client.delete(f"/v1/sessions/{session['id']}/tracks/{tracks[1]['id']}", headers=alice["headers"])
    assert removed.status_code == 204
    body = (await client.get(f"/v1/sessions/{session['id']}", headers=alice["headers"])).json()
    kept = [tracks[0]["id"], tracks[2]["id"], tracks[3]["id"], one[0]["id"]]
    assert [track["id"] for track in body["tracks"]] == kept

    # Deleting the session deletes rows only: the job's outputs are still there and downloadable.
    assert (await client.delete(f"/v1/sessions/{session['id']}", headers=alice["headers"])).status_code == 204
    assert_problem(await client.get(f"/v1/sessions/{session['id']}", headers=alice["headers"]), 404, "not_found")
    again = (await client.get(f"/v1/jobs/{job['id']}", headers=alice["headers"])).json()
    assert len(again["outputs"]) == 4
    assert (await client.get(again["outputs"][0]["url"])).status_code == 200


async def test_outputs_past_retention_show_as_expired(client, alice, app_state, tmp_path):
    job = await finished_job(client, alice, app_state, "enhance", write_audio(tmp_path / "e.wav", 1.0))
    session = await new_session(client, alice)
    await client.post(f"/v1/sessions/{session['id']}/tracks", json={"job_id": job["id"]}, headers=alice["headers"])
    later = app_state.clock() + timedelta(days=400)
    report = await clean_retention(app_state.pool, app_state.storage, app_state.settings, later)
    assert report.outputs_deleted == 1

    body = await client.get(f"/v1/sessions/{session['id']}", headers=alice["headers"])
    assert body.status_code == 200
    [track] = body.json()["tracks"]
    assert (track["status"], track["url"], track["expires_at"]) == ("expired", None, None)
    # an expired track can still be arranged or removed; adding the gone output again is refused
    patched = await client.patch(f"/v1/sessions/{session['id']}/tracks/{track['id']}", json={"offset_ms": 10},
                                 headers=alice["headers"])  # fmt: skip
    assert patched.status_code == 200 and patched.json()["status"] == "expired"
    assert_problem(await client.post(f"/v1/sessions/{session['id']}/tracks", json={"job_id": job["id"]},
                                     headers=alice["headers"]), 422, "output_unavailable")  # fmt: skip


async def test_bad_requests_and_other_users(client, alice, bob, app_state, tmp_path):
    job = await finished_job(client, alice, app_state, "midi", write_audio(tmp_path / "m.wav", 1.0))
    session = await new_session(client, alice)
    url = f"/v1/sessions/{session['id']}"
    for name in ["", "   ", "x" * 101, "bad\nname"]:
        assert_problem(await client.post("/v1/sessions", json={"name": name}, headers=alice["headers"]), 422,
                       "invalid_request")  # fmt: skip
    assert_problem(await client.post("/v1/sessions", json={"name": "x"}), 401, "unauthorized")
    # midi's only output is a .mid file: not audio
    assert_problem(await client.post(f"{url}/tracks", json={"job_id": job["id"]}, headers=alice["headers"]), 422,
                   "output_unavailable")  # fmt: skip
    audio_job = await finished_job(client, alice, app_state, "enhance", write_audio(tmp_path / "e.wav", 1.0))
    for bad in [
        {"job_id": audio_job["id"], "output": "nope.wav"},
        {"job_id": str(uuid.uuid4())},
    ]:
        assert_problem(await client.post(f"{url}/tracks", json=bad, headers=alice["headers"]), 422,
                       "output_unavailable")  # fmt: skip
    for bad in [
        {"job_id": audio_job["id"], "pan": 2},
        {"job_id": audio_job["id"], "gain_db": 30},
        {"job_id": audio_job["id"], "offset_ms": -1},
        {"job_id": audio_job["id"], "trim_in_ms": 500, "trim_out_ms": 400},
        {"job_id": audio_job["id"], "trim_in_ms": 5000},  # past the output's end
        {"job_id": audio_job["id"], "volume": 1},
    ]:
        assert_problem(await client.post(f"{url}/tracks", json=bad, headers=alice["headers"]), 422,
                       "invalid_request")  # fmt: skip
    [track] = (await client.post(f"{url}/tracks", json={"job_id": audio_job["id"]}, headers=alice["headers"])).json()[
        "tracks"
    ]
    for bad in [{}, {"name": None}, {"trim_in_ms": 2000}, {"trim_in_ms": 300, "trim_out_ms": 200}, {"pan": -1.5}]:
        assert_problem(await client.patch(f"{url}/tracks/{track['id']}", json=bad, headers=alice["headers"]), 422,
                       "invalid_request")  # fmt: skip

    # Bob sees none of it and cannot add Alice's outputs to his own session.
    assert_problem(await client.get(url, headers=bob["headers"]), 404, "not_found")
    assert_problem(await client.patch(url, json={"name": "mine"}, headers=bob["headers"]), 404, "not_found")
    assert_problem(await client.delete(url, headers=bob["headers"]), 404, "not_found")
    assert_problem(await client.delete(f"{url}/tracks/{track['id']}", headers=bob["headers"]), 404, "not_found")
    assert (await client.get("/v1/sessions", headers=bob["headers"])).json() == {"sessions": []}
    bobs = await new_session(client, bob)
    assert_problem(await client.post(f"/v1/sessions/{bobs['id']}/tracks", json={"job_id": audio_job["id"]},
                                     headers=bob["headers"]), 422, "output_unavailable")  # fmt: skip
    # a track id of another session is not found through this one
    assert_problem(await client.patch(f"/v1/sessions/{bobs['id']}/tracks/{track['id']}", json={"mute": True},
                                      headers=bob["headers"]), 404, "not_found")  # fmt: skip


async def test_caps_on_sessions_and_tracks(client, alice, app_state, tmp_path):
    async with app_state.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO sessions (user_id, name) SELECT %s, 's' || n FROM generate_series(1, %s) n",
            (alice["id"], MAX_SESSIONS_PER_USER - 1),
        )
    session = await new_session(client, alice, "last")
    problem = assert_problem(await client.post("/v1/sessions", json={"name": "one more"}, headers=alice["headers"]),
                             409, "too_many_sessions")  # fmt: skip
    assert problem["limit"] == MAX_SESSIONS_PER_USER

    job = await finished_job(
        client, alice, app_state, "separate", write_audio(tmp_path / "s.wav", 1.0, 22050, 2), {"model": "htdemucs"}
    )  # four stems
    async with app_state.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO session_tracks (session_id, user_id, job_id, output_name, position, name, duration_ms)"
            " SELECT %s, %s, %s, 'drums.wav', n, 't', 1000 FROM generate_series(1, %s) n",
            (session["id"], alice["id"], job["id"], MAX_TRACKS_PER_SESSION - 3),
        )
    # four stems do not fit in the three places left; nothing is added
    assert_problem(await client.post(f"/v1/sessions/{session['id']}/tracks", json={"job_id": job["id"]},
                                     headers=alice["headers"]), 409, "too_many_tracks")  # fmt: skip
    body = (await client.get(f"/v1/sessions/{session['id']}", headers=alice["headers"])).json()
    assert body["track_count"] == MAX_TRACKS_PER_SESSION - 3
    one = await client.post(f"/v1/sessions/{session['id']}/tracks", json={"job_id": job["id"], "output": "bass.wav"},
                            headers=alice["headers"])  # fmt: skip
    assert one.status_code == 201


async def test_rls_owner_reads_only_and_writes_nothing(client, alice, bob, app_state, database_url):
    mine = await new_session(client, alice)
    await new_session(client, bob)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SET ROLE authenticated")
        await conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (f'{{"sub": "{alice["id"]}"}}',))
        rows = await (await conn.execute("SELECT id FROM sessions")).fetchall()
        assert [str(row[0]) for row in rows] == [mine["id"]]
        for statement in ("UPDATE sessions SET name = 'x'", "DELETE FROM session_tracks",
                          f"INSERT INTO sessions (user_id, name) VALUES ('{alice['id']}', 'x')"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM sessions")
