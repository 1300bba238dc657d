"""A typed Python client generated from the served /openapi.json by openapi-python-client (a maintained generator),
used as a customer would: submit a job, read it back, and read typed problems.

The client is generated into a temporary folder at test time (never committed): the document, not hand-written code,
is what is under test. The server is the app as `studio serve` wires it (tests.serve_support.InProcessServer) on the
embedded Postgres with the builtin engines and the local worker pool.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve_support import InProcessServer, serve_in_process

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "studio_generated_client"


@pytest.fixture
def server(pg_server: Any, template_database: str) -> Iterator[InProcessServer]:
    yield from serve_in_process(pg_server, template_database, "genclient", engines="builtin")


@pytest.fixture
def generated(server: InProcessServer, tmp_path: Path) -> Iterator[Any]:
    """The client package generated from the live server's document, imported from tmp_path."""
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(f"{server.base_url}/openapi.json").raise_for_status().content)
    config = tmp_path / "generator.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run: the code is imported, not read
    run = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(document), "--meta", "none"]
        + ["--output-path", str(tmp_path / PACKAGE), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The generator prints a warning for each part of the document it could not turn into code. One is expected: the
    # tus PATCH takes `application/offset+octet-stream`, a media type the generator has no code for; tus clients
    # (tus-js-client, the CLI's) speak that endpoint, and everything else must generate.
    output = run.stdout + run.stderr
    skipped = re.findall(r"WARNING parsing (\S+ \S+)", output)
    assert run.returncode == 0 and skipped == ["PATCH /v1/uploads/{upload_id}"], output
    assert "Unsupported content type application/offset+octet-stream" in output
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for module in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[module]


def _token(server: InProcessServer) -> str:
    from api.security import ensure_user, mint_local_token

    email = f"gen-{uuid.uuid4().hex[:8]}@example.com"
    user_id = server.call(ensure_user(server.state.pool, server.settings, email))
    return mint_local_token(server.settings, server.state.signing_key, user_id, email)


def test_generated_client_submits_and_reads_a_job(server: InProcessServer, generated: Any) -> None:
    from http import HTTPStatus

    client_module = importlib.import_module(f"{PACKAGE}.client")
    submit = importlib.import_module(f"{PACKAGE}.api.jobs.submit_job_v1_jobs_post")
    get_job = importlib.import_module(f"{PACKAGE}.api.jobs.get_job_v1_jobs_job_id_get")
    models = importlib.import_module(f"{PACKAGE}.models")

    client = client_module.AuthenticatedClient(base_url=server.base_url, token=_token(server), timeout=60)
    body = models.SubmitJobV1JobsPostJsonJobCreate.from_dict(
        {"task": "generate", "params": {"prompt": "a soft bell", "duration_s": 1}}
    )
    finished = submit.sync_detailed(client=client, body=body, prefer="wait=60")  # answers once the job is final
    assert finished.status_code == HTTPStatus.OK, finished.content
    job = finished.parsed
    assert isinstance(job, models.JobOut) and job.task == "generate"

    read = get_job.sync(client=client, job_id=job.id)
    assert isinstance(read, models.JobOut) and read.id == job.id
    assert read.status == models.JobStatus.SUCCEEDED, read.error
    assert [output.name for output in read.outputs] and all(output.url for output in read.outputs)

    # Errors come back as the typed problem documents, from application/problem+json bodies.
    missing = get_job.sync_detailed(client=client, job_id=uuid.uuid4())
    assert missing.status_code == HTTPStatus.NOT_FOUND and isinstance(missing.parsed, models.ProblemBody)
    assert missing.parsed.code == "job_not_found"
    invalid = submit.sync_detailed(
        client=client, body=models.SubmitJobV1JobsPostJsonJobCreate.from_dict({"task": "generate", "params": {"x": 1}})
    )
    assert invalid.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert isinstance(invalid.parsed, models.ValidationProblem) and invalid.parsed.code == "invalid_params"
    anonymous = client_module.Client(base_url=server.base_url)
    refused = get_job.sync_detailed(client=anonymous, job_id=job.id)  # type: ignore[arg-type]
    assert refused.status_code == HTTPStatus.UNAUTHORIZED and isinstance(refused.parsed, models.ProblemBody)
