"""The README's local flow as a user runs it: `studio serve` as a real process on a real port, then `studio token`,
`studio submit --wait --out`, `studio jobs` and `studio credits`, each a separate process."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.jobs_support import write_tone
from tests.tiny_ace_step import build_ace_step, lock_pinning_folder, served_folder

ROOT = Path(__file__).resolve().parents[1]
STUDIO = [sys.executable, "-m", "api.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    with _serve(database_url, tmp_path, STUDIO_ENGINES="builtin") as running:
        yield running


@contextmanager
def _serve(database_url: str, tmp_path: Path, **extra_env: str) -> Iterator[tuple[str, dict[str, str]]]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": database_url, "STUDIO_STATE_DIR": str(tmp_path / "state"),
           "STUDIO_PUBLIC_BASE_URL": base, "STUDIO_WELCOME_CREDITS": "100", **extra_env}  # fmt: skip
    server = subprocess.Popen([*STUDIO, "serve", "--port", str(port), "--workers", "1"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for a real condition: the health endpoint answering
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else "server exited"
            assert time.monotonic() < deadline, "studio serve did not become healthy in 60 s"
            time.sleep(0.1)
        yield base, env
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
        # A clean shutdown: uvicorn finished and our cleanup ran (no re-raised signal killing the process).
        assert server.returncode == 0, output


def _studio(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STUDIO, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)


def test_local_flow_serve_token_submit_follow_download(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    base, env = served
    token = _studio(env, "token", "--email", "cli@example.com", "--credits", "500", "--curl")
    assert token.returncode == 0, token.stderr
    bearer = token.stdout.strip()
    assert f"curl -s -H 'Authorization: Bearer {bearer}' {base}/v1/credits" in token.stderr
    client_env = {**env, "STUDIO_API_URL": base, "STUDIO_TOKEN": bearer}

    audio = write_tone(tmp_path / "tone.wav", seconds=2.0, rate=22050)
    out = tmp_path / "out"
    submitted = _studio(client_env, "submit", "midi", str(audio), "--param", "onset_threshold=0.6", "--out", str(out))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert sorted(path.name for path in out.iterdir()) == ["notes.json", "notes.mid"]
    # The builtin midi engine on a steady 220 Hz tone: notes in the real engine's notes.json shape, all A3 (57).
    notes = json.loads((out / "notes.json").read_text())
    assert isinstance(notes, list) and notes
    for note in notes:
        assert set(note) == {"start_s", "end_s", "pitch", "velocity", "amplitude", "pitch_bends"}
        assert note["pitch"] == 57 and 0 <= note["start_s"] < note["end_s"] <= 2.0 and 1 <= note["velocity"] <= 127
    job_id = submitted.stdout.split()[1]

    listed = _studio(client_env, "jobs")
    assert listed.returncode == 0 and job_id in listed.stdout and "succeeded" in listed.stdout

    credits = _studio(client_env, "credits", "--ledger")
    assert credits.returncode == 0, credits.stderr
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {bearer}"}).json()
    assert job["params"]["onset_threshold"] == 0.6
    assert credits.stdout.splitlines()[0] == f"available {500 - job['cost']}  held 0"
    assert "capture" in credits.stdout and "adjustment" in credits.stdout


def test_client_errors_are_one_clear_line(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    base, env = served
    bearer = _studio(env, "token", "--email", "poor@example.com").stdout.strip()
    client_env = {**env, "STUDIO_API_URL": base, "STUDIO_TOKEN": bearer}
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = _studio(client_env, "submit", "midi", str(empty))
    # Exactly one line on stderr: status, code and the API's detail; nothing on stdout.
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "error: 422 empty_file: the file is empty\n")
    missing_token = _studio({**env, "STUDIO_TOKEN": ""}, "jobs")
    assert (missing_token.returncode, missing_token.stdout) == (2, "")
    assert missing_token.stderr == (
        "error: set STUDIO_TOKEN (or pass --token); `studio token --email you@example.com` makes one locally\n"
    )


def test_submit_master_with_a_reference(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    base, env = served
    bearer = _studio(env, "token", "--email", "mastering@example.com").stdout.strip()
    client_env = {**env, "STUDIO_API_URL": base, "STUDIO_TOKEN": bearer}
    mix = write_tone(tmp_path / "mix.wav", seconds=2.0, rate=22050)
    reference = write_tone(tmp_path / "ref.flac", seconds=3.0, rate=44100)
    out = tmp_path / "out"
    args = ["--param", "target_lufs=-14", "--reference", str(reference), "--out", str(out)]
    submitted = _studio(client_env, "submit", "master", str(mix), *args)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert sorted(path.name for path in out.iterdir()) == ["mastered.wav", "report.json"]
    report = json.loads((out / "report.json").read_text())
    # The builtin master records the reference it was given; the explicit target wins over the reference's level.
    assert report["target_lufs"] == -14.0 and math.isfinite(report["reference"]["integrated_lufs"])
    job = httpx.get(f"{base}/v1/jobs/{submitted.stdout.split()[1]}", headers={"Authorization": f"Bearer {bearer}"})
    assert job.json()["input"]["extra_inputs"]["reference"]["filename"] == "ref.flac"
    refused = _studio(client_env, "submit", "midi", str(mix), "--reference", str(reference))
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == "error: 422 unexpected_input: midi takes no `reference`.\n"


def test_the_client_follows_the_served_port_without_studio_api_url(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """`PORT=8765 bash scripts/serve.sh` then `studio submit`: the client reaches the port served, not 8000
    (issue 20 item 17); the served URL is in the state folder, beside the embedded Postgres."""
    base, env = served
    assert not base.endswith(":8000")
    bearer = _studio(env, "token", "--email", "port@example.com").stdout.strip()
    client_env = {key: value for key, value in env.items() if key != "STUDIO_API_URL"} | {"STUDIO_TOKEN": bearer}
    audio = write_tone(tmp_path / "tone.wav", seconds=1.0, rate=22050)
    submitted = _studio(client_env, "submit", "midi", str(audio), "--wait")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.split()[1]
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {bearer}"})
    assert job.json()["status"] == "succeeded"


@pytest.mark.engine
def test_submit_a_song_with_the_tiny_pipeline_installed_like_real_weights(database_url: str, tmp_path: Path) -> None:
    """The README's song line on the real engine: `studio models pull` installs the tiny AceStepPipeline from a lock
    pinning its files (as an operator pins weights), `studio serve` runs it, `studio submit song` gets the song."""
    source = build_ace_step(tmp_path / "hub" / "ace-step-1.5")
    weights_env = {"STUDIO_MODELS_LOCK": str(tmp_path / "models.lock"), "STUDIO_WEIGHTS_DIR": str(tmp_path / "weights")}
    with served_folder(source) as hub:
        lock_pinning_folder(tmp_path / "models.lock", source, hub)
        pulled = _studio({**os.environ, **weights_env}, "models", "pull", "ace-step-1.5")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    with _serve(database_url, tmp_path, STUDIO_ENGINES="real", **weights_env) as (base, env):
        bearer = _studio(env, "token", "--email", "singer@example.com").stdout.strip()
        client_env = {**env, "STUDIO_API_URL": base, "STUDIO_TOKEN": bearer}
        out = tmp_path / "out"
        lyrics = "[verse]\nhello world we sing tonight\n[chorus]\nla la la"
        args = ["--param", "prompt=upbeat synth pop", "--param", f"lyrics={lyrics}", "--param", "duration_s=1.5",
                "--param", "steps=2", "--param", "time_signature=4", "--wait", "--out", str(out)]  # fmt: skip
        submitted = _studio(client_env, "submit", "song", *args)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert sorted(path.name for path in out.iterdir()) == ["song.json", "variant_1.wav"]
    record = json.loads((out / "song.json").read_text())
    assert record["params"]["lyrics"] == lyrics and record["params"]["time_signature"] == "4"
    assert record["model"] == "ace-step-1.5" and isinstance(record["seed"], int)
