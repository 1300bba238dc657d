"""A task's second input (master's `reference`) through the HTTP API: a multipart `reference` part or a
`reference_url`, probed and capped like the main input, stored beside it and deleted with it, passed to the engine,
and never priced. Bad second inputs answer 4xx with nothing charged or stored."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from api.jobs.pricing import price
from db import ledger
from inference.params import MasterParams
from tests.jobs_api_support import wait_final, write_audio

PROBLEM = "application/problem+json"


def _files(main: Path, reference: Path | None = None) -> dict[str, Any]:
    files = {"file": (main.name, main.read_bytes(), "audio/wav")}
    if reference is not None:
        files["reference"] = (reference.name, reference.read_bytes(), "audio/wav")
    return files


def _scaled(path: Path, seconds: float, gain: float, rate: int = 16000) -> Path:
    """A tone at `gain` x the usual level: a quiet main input and a loud reference have clearly different loudness."""
    write_audio(path, seconds, rate)
    data, rate = sf.read(str(path), dtype="float32")
    sf.write(str(path), data * gain, rate, subtype="PCM_16")
    return path


def _stored_inputs(app_state: Any) -> list[Path]:
    root = app_state.settings.state_dir / "files" / app_state.settings.inputs_bucket
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


async def _nothing_charged(app_state: Any, user: dict[str, Any]) -> None:
    async with app_state.pool.connection() as conn:
        jobs = await (await conn.execute("SELECT count(*) FROM jobs WHERE user_id = %s", (user["id"],))).fetchone()
        holds = await (await conn.execute("SELECT count(*) FROM holds WHERE user_id = %s", (user["id"],))).fetchone()
        balance = await ledger.balance(conn, user["id"])
    assert (jobs, holds, balance.available, balance.held) == ((0,), (0,), 100, 0)
    assert _stored_inputs(app_state) == []


async def test_reference_upload_reaches_the_engine_is_not_priced_and_is_deleted_with_the_input(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    main = _scaled(tmp_path / "mix.wav", 2.0, 0.1)
    reference = _scaled(tmp_path / "ref.wav", 70.0, 1.5)  # longer than a minute: priced, it would cost 2 credits
    quote = await client.post(
        "/v1/quotes", headers=alice["headers"], data={"task": "master"}, files=_files(main, reference)
    )
    assert quote.status_code == 200, quote.text
    assert quote.json()["credits"] == 1 and quote.json()["duration_s"] == pytest.approx(2.0, abs=0.01)

    created = await client.post(
        "/v1/jobs",
        headers=alice["headers"],
        data={"task": "master", "params": json.dumps({"ceiling_dbtp": -1.0})},
        files=_files(main, reference),
    )
    assert created.status_code == 202, created.text
    assert created.json()["cost"] == price("master", MasterParams(), 2.0) == 1
    stored = sorted(path.name for path in _stored_inputs(app_state))
    assert stored == ["input.wav", "reference.wav"]  # stored beside the input under the job's folder
    job = await wait_final(client, alice["headers"], created.json()["id"], app_state)
    assert job["status"] == "succeeded", job
    given = job["input"]["extra_inputs"]["reference"]
    assert given["filename"] == "ref.wav" and given["duration_s"] == pytest.approx(70.0, abs=0.01)
    assert given["source"] == "upload" and given["container"] == "wav"
    report_out = next(out for out in job["outputs"] if out["name"] == "report.json")
    report = (await client.get(report_out["url"])).json()
    # No target_lufs given: the builtin master levels to the reference's loudness, so the reference arrived.
    reference_lufs = report["reference"]["integrated_lufs"]
    assert report["target_lufs"] == pytest.approx(reference_lufs, abs=0.01)
    assert report["input"]["integrated_lufs"] < reference_lufs - 15
    assert report["output"]["integrated_lufs"] == pytest.approx(reference_lufs, abs=1.5)
    assert _stored_inputs(app_state) == []  # both deleted once the job is final
    async with app_state.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT input_ref, extra_inputs FROM jobs WHERE id = %s", (job["id"],))
        ).fetchone()
    assert row == (None, {})

    # The reference is part of what an Idempotency-Key stands for: another reference under the same key is refused.
    keyed = {**alice["headers"], "Idempotency-Key": "master-with-reference"}
    first = await client.post("/v1/jobs", headers=keyed, data={"task": "master"}, files=_files(main, reference))
    assert first.status_code == 202, first.text
    replay = await client.post("/v1/jobs", headers=keyed, data={"task": "master"}, files=_files(main, reference))
    assert replay.headers.get("idempotent-replayed") == "true" and replay.json()["id"] == first.json()["id"]
    other = await client.post("/v1/jobs", headers=keyed, data={"task": "master"}, files=_files(main, main))
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def reference_server(tmp_path: Path) -> Iterator[str]:
    _Handler.routes = {"/ref.wav": _scaled(tmp_path / "served.wav", 2.0, 1.5).read_bytes()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_reference_url_goes_through_the_outbound_guard_and_runs(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, reference_server: str
) -> None:
    main = _scaled(tmp_path / "mix.wav", 1.0, 0.1)
    form = {"task": "master", "reference_url": f"{reference_server}/ref.wav"}
    denied = await client.post("/v1/jobs", headers=alice["headers"], data=form, files=_files(main))
    assert denied.status_code == 422 and denied.json()["code"] == "input_url_not_allowed"  # loopback, http
    await _nothing_charged(app_state, alice)
    app_state.settings = app_state.settings.model_copy(update={"input_url_allow_insecure": True})
    created = await client.post(
        "/v1/jobs", headers={**alice["headers"], "Prefer": "wait=60"}, data=form, files=_files(main)
    )
    # The only job of the test (a 1 s master): it finishes inside the wait, so the answer is the final job.
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["status"] == "succeeded", job
    given = job["input"]["extra_inputs"]["reference"]
    assert given["source"] == "url" and given["url"] == f"{reference_server}/ref.wav"
    report_out = next(out for out in job["outputs"] if out["name"] == "report.json")
    assert "reference" in (await client.get(report_out["url"])).json()
    assert _stored_inputs(app_state) == []


async def test_bad_second_inputs_are_4xx_and_charge_nothing(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.settings.max_duration_seconds = 5.0
    main = _scaled(tmp_path / "mix.wav", 1.0, 0.1)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(1).bytes(20_000))
    too_long = _scaled(tmp_path / "long.wav", 6.0, 1.0)
    cases: list[tuple[str, dict[str, Any], str, str | None]] = [
        ("undecodable", {"data": {"task": "master"}, "files": _files(main, garbage)}, "undecodable_audio", None),
        ("too long", {"data": {"task": "master"}, "files": _files(main, too_long)}, "audio_too_long", None),
        ("separate takes none", {"data": {"task": "separate"}, "files": _files(main, main)}, "unexpected_input",
         "reference"),
        ("midi takes no url", {"data": {"task": "midi", "reference_url": "https://example.com/r.wav"},
                               "files": _files(main)}, "unexpected_input", "reference_url"),
        ("json on tune", {"json": {"task": "tune", "input_url": "https://example.com/a.wav",
                                   "reference_url": "https://example.com/r.wav"}}, "unexpected_input",
         "reference_url"),
        ("both forms", {"data": {"task": "master", "reference_url": "https://example.com/r.wav"},
                        "files": _files(main, main)}, "invalid_request", None),
    ]  # fmt: skip
    for name, kwargs, code, field in cases:
        for path in ("/v1/jobs", "/v1/quotes"):
            response = await client.post(path, headers=alice["headers"], **kwargs)
            assert response.status_code == 422, (name, path, response.text)
            assert response.headers["content-type"] == PROBLEM, name
            problem = response.json()
            assert problem["code"] == code, (name, path, problem)
            if field is not None:
                assert problem["field"] == field and f"`{field}`" in problem["detail"], problem
    await _nothing_charged(app_state, alice)


class TestWithTheRealMasterEngine:
    @pytest.fixture
    def settings(self, settings: Any) -> Any:
        return settings.model_copy(update={"engines": "real"})

    @pytest.mark.engine
    async def test_the_reference_changes_the_output(
        self, client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
    ) -> None:
        rate = 44100
        t = np.arange(3 * rate) / rate
        noise = np.random.default_rng(2).standard_normal(t.size)
        # A bright mix (white noise + tone) and a dark reference (the same noise low-passed by a running mean).
        mix = 0.1 * noise + 0.2 * np.sin(2 * np.pi * 220 * t)
        dark = 0.3 * np.convolve(noise, np.ones(32) / 32 * 4, mode="same")
        sf.write(str(tmp_path / "mix.wav"), mix.astype(np.float32), rate, subtype="PCM_16")
        sf.write(str(tmp_path / "dark.wav"), dark.astype(np.float32), rate, subtype="PCM_16")
        params = {"target_lufs": -14, "format": "wav"}
        outputs: dict[str, np.ndarray] = {}
        reports: dict[str, dict[str, Any]] = {}
        for label, reference in (("plain", None), ("matched", tmp_path / "dark.wav")):
            created = await client.post(
                "/v1/jobs",
                headers=alice["headers"],
                data={"task": "master", "params": json.dumps(params)},
                files=_files(tmp_path / "mix.wav", reference),
            )
            assert created.status_code == 202, created.text
            job = await wait_final(client, alice["headers"], created.json()["id"], app_state, rounds=120)
            assert job["status"] == "succeeded", job
            by_name = {out["name"]: out for out in job["outputs"]}
            audio_path = tmp_path / f"{label}.wav"
            audio_path.write_bytes((await client.get(by_name["mastered.wav"]["url"])).content)
            outputs[label] = sf.read(str(audio_path), dtype="float64")[0]
            reports[label] = (await client.get(by_name["report.json"]["url"])).json()
        assert "reference" not in reports["plain"]
        matched = reports["matched"]["reference"]
        assert matched["spectral_distance_db_after"] < matched["spectral_distance_db_before"]
        assert outputs["plain"].shape == outputs["matched"].shape
        difference = outputs["plain"] - outputs["matched"]
        assert np.sqrt(np.mean(difference**2)) > 0.1 * np.sqrt(np.mean(outputs["plain"] ** 2))
        assert _stored_inputs(app_state) == []


async def test_openapi_documents_the_second_input(client: Any) -> None:
    document = (await client.get("/openapi.json")).json()
    for path in ("/v1/jobs", "/v1/quotes"):
        form = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["reference"] == {
            "type": "string",
            "format": "binary",
            "description": "master only: a reference track whose tone and loudness to match.",
        }
        assert "reference_url" in form["properties"]
        json_body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "reference_url" in json_body["properties"]
    tasks = {item["task"]: item for item in (await client.get("/v1/tasks")).json()["data"]}
    target = tasks["master"]["params_schema"]["properties"]["target_lufs"]
    assert target["default"] is None and "reference" in target["description"]
