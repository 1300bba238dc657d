"""Live job events: the LISTEN hub, `wait_until_final`, and the SSE endpoint over real HTTP (uvicorn on 127.0.0.1),
driven by job rows updated from other connections, as workers do."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.background import events
from api.main import install_error_handlers
from api.routes import events as event_routes


@pytest.fixture
async def hub(app_state: Any) -> AsyncIterator[events.EventsHub]:
    hub = events.EventsHub(app_state)
    await hub.start()
    app_state.events = hub
    yield hub
    await hub.stop()


@pytest.fixture
async def base_url(app_state: Any, hub: events.EventsHub) -> AsyncIterator[str]:
    """The events router served by uvicorn: httpx's ASGI transport buffers whole responses, so it cannot stream."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(event_routes.router, prefix="/v1")
    app.state.studio = app_state
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # listening before the server task runs: clients may connect at once
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task


async def new_job(app_state: Any, user_id: uuid.UUID, status: str = "queued") -> uuid.UUID:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at, status)"
            " VALUES (%s, 'midi', '{}', 'basic-pitch', 5, now() + interval '1 hour', %s) RETURNING id",
            (user_id, status),
        )
        return (await cursor.fetchone())[0]


async def update(app_state: Any, job_id: uuid.UUID, **changes: Any) -> None:
    """One UPDATE from a pool connection, committed (a worker reporting progress looks like this)."""
    assignments = ", ".join(f"{column} = %({column})s" for column in changes)
    async with app_state.pool.connection() as conn:
        await conn.execute(f"UPDATE jobs SET {assignments} WHERE id = %(id)s", {**changes, "id": job_id})


class EventStream:
    """Parses an SSE response into events ({"event", "id", "data"}) and comments."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, *, comments: bool = False) -> dict[str, Any] | None:
        """The next event (or comment), or None when the server closed the stream."""
        fields: dict[str, Any] = {}
        async with asyncio.timeout(10):
            async for line in self._lines:
                if line.startswith(":"):
                    if comments:
                        return {"comment": line[1:].strip()}
                elif line == "":
                    if "event" in fields:
                        return fields
                    fields = {}
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    fields[name] = json.loads(value) if name == "data" else value
        return None


@pytest.fixture
async def sse(base_url: str) -> Any:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:

        def open_stream(job_id: uuid.UUID, headers: dict[str, str]) -> Any:
            return client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers)

        yield open_stream


async def test_stream_follows_a_job_to_done_and_closes(app_state, alice, sse):
    job_id = await new_job(app_state, alice["id"])
    async with sse(job_id, alice["headers"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        first = await stream.next()
        assert first == {
            "event": "status",
            "id": "0",
            "data": {"id": str(job_id), "status": "queued", "progress": 0.0, "stage": None},
        }

        await update(app_state, job_id, status="running", stage="loading")
        assert await stream.next() == {
            "event": "status",
            "id": "1",
            "data": {"id": str(job_id), "status": "running", "progress": 0.0, "stage": "loading"},
        }
        await update(app_state, job_id, heartbeat_at=None)  # not a state change: no event
        await update(app_state, job_id, progress=0.3, stage="transcribing")
        assert await stream.next() == {
            "event": "progress",
            "id": "2",
            "data": {"id": str(job_id), "status": "running", "progress": 0.3, "stage": "transcribing"},
        }

        await update(app_state, job_id, status="succeeded", progress=1.0, stage="done")
        final = await stream.next()
        assert final["event"] == "status" and "id" not in final and final["data"]["status"] == "succeeded"
        done = await stream.next()
        assert done["event"] == "done" and done["id"] == "3"
        assert done["data"]["id"] == str(job_id) and done["data"]["status"] == "succeeded"
        assert done["data"]["links"]["events"] == f"/v1/jobs/{job_id}/events"  # the job as GET returns it
        assert await stream.next() is None  # closed by the server


async def test_last_event_id_resumes_without_repeating_seen_state(app_state, alice, sse):
    job_id = await new_job(app_state, alice["id"])
    await update(app_state, job_id, status="running")
    await update(app_state, job_id, progress=0.5)  # seq 2

    # Behind: the current state is sent at once.
    async with sse(job_id, {**alice["headers"], "Last-Event-ID": "1"}) as response:
        assert await EventStream(response).next() == {
            "event": "status",
            "id": "2",
            "data": {"id": str(job_id), "status": "running", "progress": 0.5, "stage": None},
        }

    # Up to date: the first event is the next change, not a repeat of seq 2.
    async with sse(job_id, {**alice["headers"], "Last-Event-ID": "2"}) as response:
        stream = EventStream(response)
        await update(app_state, job_id, progress=0.75)
        event = await stream.next()
        assert (event["id"], event["data"]["progress"]) == ("3", 0.75)

    # Final, and `done` was seen: 204 tells EventSource to stop reconnecting.
    await update(app_state, job_id, status="failed")
    async with sse(job_id, {**alice["headers"], "Last-Event-ID": "4"}) as response:
        assert response.status_code == 204
    # Final, but `done` was missed: the final status and done again, then close.
    async with sse(job_id, {**alice["headers"], "Last-Event-ID": "3"}) as response:
        stream = EventStream(response)
        assert [(await stream.next())["event"], (await stream.next())["event"]] == ["status", "done"]
        assert await stream.next() is None


async def test_keep_alive_comments_while_idle(app_state, alice, hub, sse):
    hub.keepalive_seconds = 0.05
    job_id = await new_job(app_state, alice["id"])
    async with sse(job_id, alice["headers"]) as response:
        stream = EventStream(response)
        assert (await stream.next())["event"] == "status"
        assert await stream.next(comments=True) == {"comment": "keep-alive"}
        await update(app_state, job_id, status="canceled")
        while (event := await stream.next())["event"] != "done":
            assert event["data"]["status"] == "canceled"


async def test_other_users_jobs_are_not_found(app_state, alice, bob, sse):
    job_id = await new_job(app_state, alice["id"])
    for target, headers in [(job_id, bob["headers"]), (uuid.uuid4(), alice["headers"])]:
        async with sse(target, headers) as response:
            await response.aread()
            assert response.status_code == 404 and response.json()["code"] == "not_found"
    async with sse(job_id, {}) as response:
        await response.aread()
        assert response.status_code == 401


async def test_wait_until_final(app_state, alice, hub):
    done = await new_job(app_state, alice["id"], status="succeeded")
    await asyncio.wait_for(hub.wait_until_final(done, timeout=30), timeout=5)  # already final: at once
    await asyncio.wait_for(hub.wait_until_final(uuid.uuid4(), timeout=30), timeout=5)  # unknown: nothing to wait for

    running = await new_job(app_state, alice["id"], status="running")
    async with hub.subscribe(running) as probe:
        waiter = asyncio.create_task(hub.wait_until_final(running, timeout=30))
        await update(app_state, running, progress=0.5)
        async with asyncio.timeout(5):  # the insert's own notification may come first
            while (await probe.get() or {}).get("progress") != 0.5:
                pass
        # The hub has fanned the progress change out to every subscriber, the waiter included.
        # A progress change is not the end: the waiter keeps waiting (it would return within ms if it stopped).
        done, _ = await asyncio.wait({waiter}, timeout=0.5)
        assert not done
        await update(app_state, running, status="succeeded")
        await asyncio.wait_for(waiter, timeout=5)

    # A job that stays running: the wait lasts its whole timeout, then returns without raising.
    still_running = await new_job(app_state, alice["id"], status="running")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(hub.wait_until_final(still_running, timeout=0.3), timeout=5)
    assert loop.time() - started >= 0.29


async def test_hub_reconnects_and_resyncs_after_losing_its_connection(app_state, alice, hub, sse):
    job_id = await new_job(app_state, alice["id"])
    async with sse(job_id, alice["headers"]) as response:
        stream = EventStream(response)
        assert (await stream.next())["data"]["status"] == "queued"
        async with app_state.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = %s",
                (f"LISTEN {events.CHANNEL}",),
            )
            assert await cursor.fetchall() == [(True,)]
        # Whether this lands before the hub reconnects (reported by its resync) or after, the stream reports it.
        await update(app_state, job_id, status="running", progress=0.2)
        event = await stream.next()
        assert (event["event"], event["data"]["status"], event["data"]["progress"]) == ("status", "running", 0.2)
