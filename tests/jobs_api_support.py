"""Helpers for the jobs API tests: real audio files in every accepted format, and following a job to its end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import av
import numpy as np
import soundfile as sf

FINAL = ("succeeded", "failed", "canceled")


def tone(seconds: float, rate: int = 16000, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """(samples, channels) float32: a tone with a little noise, so every builtin engine has something to find."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_audio(path: Path, seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> Path:
    """Write a real file in the format its suffix names: wav, flac, ogg (vorbis), mp3 via libsndfile; m4a via PyAV."""
    data = tone(seconds, rate, channels)
    suffix = path.suffix.lower()
    if suffix == ".m4a":
        layout = "mono" if channels == 1 else "stereo"
        with av.open(str(path), "w", format="ipod") as container:
            stream = container.add_stream("aac", rate=rate, layout=layout)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        return path
    formats = {
        ".wav": ("WAV", "PCM_16"),
        ".flac": ("FLAC", "PCM_16"),
        ".ogg": ("OGG", "VORBIS"),
        ".mp3": ("MP3", "MPEG_LAYER_III"),
    }
    fmt, subtype = formats[suffix]
    sf.write(str(path), data, rate, format=fmt, subtype=subtype)
    return path


def multipart(
    task: str,
    params: dict[str, Any] | None = None,
    path: Path | None = None,
    content_type: str = "application/octet-stream",
    **fields: str,
) -> dict[str, Any]:
    """httpx kwargs for a multipart submit."""
    data = {"task": task, "params": json.dumps(params or {}), **fields}
    files = {"file": (path.name, path.read_bytes(), content_type)} if path is not None else None
    return {"data": data, "files": files}


async def wait_final(
    client: Any, headers: dict[str, str], job_id: str, app_state: Any, rounds: int = 40
) -> dict[str, Any]:
    """GET the job until it is final: each round waits on the events hub (no sleeps), bounded by `rounds`."""
    hub = app_state.events
    job: dict[str, Any] = {}
    for _ in range(rounds):
        response = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in FINAL:
            return job
        await hub.wait_until_final(UUID(job_id), 5.0)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def wait_status(app_state: Any, job_id: str, status: str, timeout: float = 60.0) -> None:
    """Return once the job reaches `status` (or any final state), via the events hub."""
    from db.jobs import get_job

    async def reached() -> bool:
        async with app_state.pool.connection() as conn:
            row = await get_job(conn, UUID(job_id))
        return row is not None and (row["status"] == status or row["status"] in FINAL)

    hub = app_state.events
    async with asyncio.timeout(timeout), hub.subscribe(UUID(job_id)) as queue:
        if await reached():
            return
        while True:
            update = await queue.get()
            if isinstance(update, dict):
                if update["status"] == status or update["status"] in FINAL:
                    return
            elif await reached():  # a resync marker: read the row again
                return
