"""mixdown: the engine against an independent numpy sum of the tracks (offsets, trims, gains, equal-power pans), in
one block and in many; and through the API: a session of three jobs' outputs mixed, priced per minute of the mix,
mute/solo resolved, another user's outputs refused."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from inference import mixdown
from inference.base import no_progress
from inference.mixdown import MixdownEngine
from inference.params import MixdownParams
from tests.auth_support import assert_problem
from tests.jobs_api_support import multipart, wait_final, write_audio
from tests.test_sessions_api import finished_job, new_session

# 24-bit output: one step is 2 / 2**24 ~ 1.2e-7, and rounding is at most half of one; float32 sums add a few ulps.
EXACT_TOLERANCE = 3e-7
# A 44.1 kHz track resampled to 48 kHz by soxr (HQ) against scipy's polyphase resampler: both are near-ideal
# low-pass filters that differ by far less than this away from the file's edges (measured here: ~1e-4).
RESAMPLED_TOLERANCE = 2e-3


def _write(path: Path, data: np.ndarray, rate: int) -> Path:
    sf.write(str(path), data, rate, subtype="FLOAT")  # float wav: decoded back bit-exact
    return path


def _noise(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.08 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)


def _tones(seconds: float, rate: int) -> np.ndarray:
    """Mono tones well inside both resamplers' passbands (white noise would compare their transition bands)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(0.1 * np.sin(2 * np.pi * freq * t + freq) for freq in (220.0, 1234.5, 5000.0, 12000.0))
    return wave[:, None].astype(np.float32)


def reference_mix(tracks: list[dict[str, Any]], audio: list[np.ndarray], rate: int) -> np.ndarray:
    """The sum the timeline plays, written from the Web Audio spec's StereoPannerNode equations, independently of
    the engine: (frames, 2)."""
    placed = []
    for track, data in zip(tracks, audio, strict=True):
        duration = track["duration_ms"]
        end = duration if track.get("trim_out_ms") is None else min(track["trim_out_ms"], duration)
        first, stop = round(track.get("trim_in_ms", 0) * rate / 1000), round(end * rate / 1000)
        part = data[first:stop].astype(np.float64)
        part = np.pad(part, ((0, stop - first - len(part)), (0, 0)))  # a file shorter than priced: silence
        part *= 10 ** (track.get("gain_db", 0.0) / 20)
        pan = track.get("pan", 0.0)
        if part.shape[1] == 1:
            angle = (pan + 1) / 2 * math.pi / 2
            stereo = np.column_stack([part[:, 0] * math.cos(angle), part[:, 0] * math.sin(angle)])
        elif pan <= 0:
            angle = (pan + 1) * math.pi / 2
            stereo = np.column_stack([part[:, 0] + part[:, 1] * math.cos(angle), part[:, 1] * math.sin(angle)])
        else:
            angle = pan * math.pi / 2
            stereo = np.column_stack([part[:, 0] * math.cos(angle), part[:, 1] + part[:, 0] * math.sin(angle)])
        placed.append((round(track.get("offset_ms", 0) * rate / 1000), stereo))
    total = max(offset + len(stereo) for offset, stereo in placed)
    mix = np.zeros((total, 2))
    for offset, stereo in placed:
        mix[offset : offset + len(stereo)] += stereo
    return mix


def _tracks(job_ids: int) -> list[dict[str, Any]]:
    ids = [str(uuid.uuid4()) for _ in range(job_ids)]
    return [
        {"job_id": ids[0], "output": "a.wav", "duration_ms": 3000, "offset_ms": 0, "gain_db": -3.0, "pan": -0.6},
        # stereo, panned right, trimmed both ends, straddling block edges
        {"job_id": ids[1], "output": "b.wav", "duration_ms": 2500, "offset_ms": 1337, "gain_db": 2.0, "pan": 0.4,
         "trim_in_ms": 250, "trim_out_ms": 2000},
        # claims more than the file holds: the rest plays silence, and the mix is as long as it was priced
        {"job_id": ids[2], "output": "c.wav", "duration_ms": 1200, "offset_ms": 3100, "pan": 0.0},
    ]  # fmt: skip


@pytest.mark.parametrize("block_frames", [mixdown.BLOCK_FRAMES, 997])
def test_engine_matches_an_independent_sum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_frames: int):
    monkeypatch.setattr(mixdown, "BLOCK_FRAMES", block_frames)
    rate = 48000
    audio = [_noise(3.0, rate, 1, 1), _noise(2.5, rate, 2, 2), _noise(1.0, rate, 2, 3)]
    paths = {f"track{i}": _write(tmp_path / f"t{i}.wav", data, rate) for i, data in enumerate(audio)}
    tracks = _tracks(3)
    params = MixdownParams.model_validate({"tracks": tracks, "sample_rate": rate})
    result = MixdownEngine().run(None, params, tmp_path / "out", no_progress, paths)

    [output] = result.outputs
    mixed, written_rate = sf.read(str(output.path), dtype="float64")
    expected = reference_mix(tracks, audio, rate)
    assert written_rate == rate and mixed.shape == expected.shape == (params.output_frames(), 2)
    assert params.output_frames() == round(4.3 * rate)  # the last track ends at 3.1 s + 1.2 s
    np.testing.assert_allclose(mixed, expected, rtol=0, atol=EXACT_TOLERANCE)
    assert np.abs(expected).max() > 0.1  # the comparison is of real signal
    assert result.metrics["output_seconds"] == pytest.approx(4.3)


def test_a_track_at_another_rate_is_resampled(tmp_path: Path):
    audio = _tones(2.0, 44100)
    tracks = [{"job_id": str(uuid.uuid4()), "output": "x.wav", "duration_ms": 2000, "offset_ms": 500, "pan": 1.0}]
    params = MixdownParams.model_validate({"tracks": tracks, "sample_rate": 48000})
    result = MixdownEngine().run(None, params, tmp_path / "out", no_progress,
                                 {"track0": _write(tmp_path / "x.wav", audio, 44100)})  # fmt: skip
    mixed, _ = sf.read(str(result.outputs[0].path), dtype="float64")
    resampled = resample_poly(audio.astype(np.float64), 160, 147, axis=0)  # 48000 / 44100 = 160 / 147
    expected = reference_mix(tracks, [resampled], 48000)
    assert mixed.shape == expected.shape
    interior = slice(24000 + 2000, len(mixed) - 2000)  # away from the filters' edges
    np.testing.assert_allclose(mixed[interior], expected[interior], rtol=0, atol=RESAMPLED_TOLERANCE)
    assert np.abs(mixed[:24000]).max() == 0  # nothing before its offset
    assert np.abs(mixed[:, 0]).max() < 1e-7  # pan 1: all right


def test_params_refuse_empty_trims():
    track = {"job_id": str(uuid.uuid4()), "output": "x.wav", "duration_ms": 1000, "trim_in_ms": 1000}
    with pytest.raises(ValueError, match="trims leave nothing"):
        MixdownParams.model_validate({"tracks": [track]})
    with pytest.raises(ValueError):
        MixdownParams.model_validate({"tracks": []})


# ---- through the API ----


async def _download(client: Any, url: str, path: Path) -> Path:
    response = await client.get(url)
    assert response.status_code == 200
    path.write_bytes(response.content)
    return path


async def test_session_mixdown_matches_the_tracks_and_is_priced_per_minute(client, alice, bob, app_state, tmp_path):
    jobs = [
        await finished_job(client, alice, app_state, "enhance", write_audio(tmp_path / "v.wav", 2.0, 48000)),
        await finished_job(client, alice, app_state, "separate", write_audio(tmp_path / "s.wav", 3.0, 48000, 2),
                           {"two_stems": "vocals"}),
        await finished_job(client, alice, app_state, "fx", write_audio(tmp_path / "f.wav", 2.0, 48000),
                           {"chain": [{"effect": "gain", "params": {"gain_db": -3}}]}),
    ]  # fmt: skip
    # All at the mix's rate, so the comparison is exact (resampling is compared in the engine test above).
    session = await new_session(client, alice, "Mix")
    url = f"/v1/sessions/{session['id']}"
    settings = [
        {"output": None, "offset_ms": 0, "gain_db": -2.0, "pan": -0.3},
        {"output": "vocals.wav", "offset_ms": 750, "pan": 0.5, "trim_in_ms": 500, "trim_out_ms": 2500},
        {"output": None, "offset_ms": 1500, "gain_db": -6.0},
    ]
    tracks = []
    for job, extra in zip(jobs, settings, strict=True):
        added = await client.post(f"{url}/tracks", json={"job_id": job["id"], **extra}, headers=alice["headers"])
        assert added.status_code == 201, added.text
        tracks += added.json()["tracks"]
    # A muted track is left out; so is everything else once a track is soloed (checked below).
    [extra_track] = (
        await client.post(
            f"{url}/tracks",
            json={"job_id": jobs[1]["id"], "output": "no_vocals.wav", "mute": True},
            headers=alice["headers"],
        )  # fmt: skip
    ).json()["tracks"]

    before = (await client.get("/v1/credits", headers=alice["headers"])).json()["available"]
    submitted = await client.post(f"{url}/mixdown", json={}, headers=alice["headers"])
    assert submitted.status_code == 202, submitted.text
    job = await wait_final(client, alice["headers"], submitted.json()["id"], app_state)
    assert job["status"] == "succeeded", job
    assert job["task"] == "mixdown" and [out["name"] for out in job["outputs"]] == ["mixdown.wav"]
    mixed, rate = sf.read(str(await _download(client, job["outputs"][0]["url"], tmp_path / "mix.wav")),
                          dtype="float64")  # fmt: skip

    audio = []
    for index, track in enumerate(tracks):
        path = await _download(client, track["url"], tmp_path / f"track{index}.wav")
        data, track_rate = sf.read(str(path), dtype="float64", always_2d=True)
        assert track_rate == rate
        audio.append(data)
    expected = reference_mix(tracks, audio, rate)
    assert rate == 48000 and mixed.shape == expected.shape
    np.testing.assert_allclose(mixed, expected, rtol=0, atol=EXACT_TOLERANCE)
    seconds = len(expected) / rate
    assert seconds == pytest.approx(3.5, abs=0.01)  # the fx track ends last: 1.5 s + 2 s
    assert job["cost"] == max(1, math.ceil(seconds / 60))
    after = (await client.get("/v1/credits", headers=alice["headers"])).json()["available"]
    assert before - after == job["cost"]

    # The mix is a normal output: it can itself be a track (and so be sent on, e.g. to master).
    added = await client.post(f"{url}/tracks", json={"job_id": job["id"]}, headers=alice["headers"])
    assert added.status_code == 201 and added.json()["tracks"][0]["output"] == "mixdown.wav"

    # Solo one track: only it is mixed.
    await client.patch(f"{url}/tracks/{extra_track['id']}", json={"mute": False, "solo": True},
                       headers=alice["headers"])  # fmt: skip
    solo = await client.post(f"{url}/mixdown", json={"format": "flac"}, headers=alice["headers"])
    solo_job = await wait_final(client, alice["headers"], solo.json()["id"], app_state)
    assert solo_job["status"] == "succeeded" and len(solo_job["params"]["tracks"]) == 1
    assert solo_job["params"]["tracks"][0]["output"] == "no_vocals.wav"

    # Bob names Alice's outputs in a mixdown of his own: the worker finds nothing of his, fails it, charges nothing.
    bob_before = (await client.get("/v1/credits", headers=bob["headers"])).json()["available"]
    forged = {"tracks": [{"job_id": jobs[0]["id"], "output": tracks[0]["output"], "duration_ms": 2000}]}
    stolen = await client.post("/v1/jobs", json={"task": "mixdown", "params": forged}, headers=bob["headers"])
    assert stolen.status_code == 202, stolen.text
    failed = await wait_final(client, bob["headers"], stolen.json()["id"], app_state)
    assert failed["status"] == "failed" and failed["error"]["code"] == "track_unavailable"
    assert failed["outputs"] == []
    assert (await client.get("/v1/credits", headers=bob["headers"])).json()["available"] == bob_before


async def test_mixdown_refusals(client, alice, bob, app_state, tmp_path):
    job = await finished_job(client, alice, app_state, "enhance", write_audio(tmp_path / "v.wav", 1.0))
    session = await new_session(client, alice)
    url = f"/v1/sessions/{session['id']}"
    assert_problem(await client.post(f"{url}/mixdown", json={}, headers=alice["headers"]), 422, "nothing_to_mix")
    [track] = (await client.post(f"{url}/tracks", json={"job_id": job["id"], "mute": True},
                                 headers=alice["headers"])).json()["tracks"]  # fmt: skip
    assert_problem(await client.post(f"{url}/mixdown", json={}, headers=alice["headers"]), 422, "nothing_to_mix")
    await client.patch(f"{url}/tracks/{track['id']}", json={"mute": False}, headers=alice["headers"])
    assert_problem(await client.post(f"{url}/mixdown", json={"format": "ogg"}, headers=alice["headers"]), 422,
                   "invalid_request")  # fmt: skip
    assert_problem(await client.post(f"{url}/mixdown", json={}, headers=bob["headers"]), 404, "not_found")
    # an offset past the deployment's cap: refused before anything is held
    cap = app_state.settings.max_duration_seconds
    await client.patch(f"{url}/tracks/{track['id']}", json={"offset_ms": int(cap * 1000)}, headers=alice["headers"])
    assert_problem(await client.post(f"{url}/mixdown", json={}, headers=alice["headers"]), 422, "audio_too_long")
    # a mixdown takes no uploaded audio
    assert_problem(
        await client.post("/v1/jobs", headers=alice["headers"], **multipart(
            "mixdown", {"tracks": [{"job_id": job["id"], "output": "x.wav", "duration_ms": 10}]},
            write_audio(tmp_path / "u.wav", 0.5))),
        422, "unexpected_input",
    )  # fmt: skip
    # expired outputs
    async with app_state.pool.connection() as conn:
        await conn.execute("UPDATE jobs SET outputs_deleted_at = now() WHERE id = %s", (job["id"],))
    await client.patch(f"{url}/tracks/{track['id']}", json={"offset_ms": 0}, headers=alice["headers"])
    problem = assert_problem(await client.post(f"{url}/mixdown", json={}, headers=alice["headers"]), 422,
                             "nothing_to_mix")  # fmt: skip
    assert problem["expired"] == [track["name"]]
    credits = (await client.get("/v1/credits", headers=alice["headers"])).json()
    assert credits["held"] == 0
