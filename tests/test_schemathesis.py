"""Property-based HTTP fuzzing of the published OpenAPI schema (schemathesis 4, every check) against a live server.

The app runs under uvicorn in its own thread and event loop (its database pool is bound to that loop), on the
test database, with the builtin engines; requests carry a real bearer token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup
from schemathesis.openapi.checks import RejectedPositiveData

# Deliberate, documented 503s (Stripe not configured in tests); anything else 5xx is a bug.
DESIGNED_503 = {"billing_disabled"}
# tus PATCH bodies (/v1/uploads/{id}) are plain bytes.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


class _LiveApi:
    def __init__(self, app_settings: Any, database_url: str) -> None:
        self.settings, self.database_url = app_settings, database_url
        self.ready = threading.Event()
        self.base_url = ""
        self.headers: dict[str, str] = {}
        self.server: Any = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        import uvicorn

        from api.database import open_pool, secret_key
        from api.dispatchers.local import LocalDispatcher
        from api.main import create_app
        from api.security import ensure_user, mint_local_token
        from api.state import AppState
        from api.storage import LocalStorage
        from api.wiring import background_services

        pool = await open_pool(self.database_url, self.settings)
        key = secret_key(self.settings)
        dispatcher = LocalDispatcher(self.settings, self.database_url)
        state = AppState(
            settings=self.settings,
            pool=pool,
            database_url=self.database_url,
            storage=LocalStorage(self.settings.state_dir / "files", key, "http://127.0.0.1"),
            dispatcher=dispatcher,
            signing_key=key,
        )
        user_id = await ensure_user(state.pool, state.settings, "fuzz@example.com")
        self.headers = {"Authorization": f"Bearer {mint_local_token(self.settings, key, user_id, 'fuzz@example.com')}"}
        app = create_app(state, background=background_services(state))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)  # uvicorn offers no startup event to await
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.ready.set()
        await serving
        await dispatcher.close()
        await pool.close()


@pytest.fixture
def live_api(settings: Any, database_url: str) -> Iterator[_LiveApi]:
    settings.max_running_jobs_per_user = 0  # fuzzed submits stay queued: the fuzzer tests the HTTP surface
    live = _LiveApi(settings, database_url)
    live.thread.start()
    assert live.ready.wait(60)
    yield live
    live.server.should_exit = True
    live.thread.join(30)


# Operations whose schema-valid requests the server may still refuse with a documented 4xx, because what it checks
# is beyond what JSON Schema can say: the audio must decode, each task's params and installed models differ per task
# and deployment (GET /v1/tasks lists them), a cursor is an opaque token from a previous page, and a usage period
# must run forwards and span at most 366 days. Every other
# operation must accept what its schema allows.
CHECKED_BEYOND_THE_SCHEMA = {
    "POST /v1/jobs": {400, 422},
    "POST /v1/quotes": {400, 422},
    "POST /v1/audio/transcriptions": {400, 422},
    "POST /v1/audio/translations": {400, 422},
    "GET /v1/jobs": {422},
    "GET /v1/credits/ledger": {422},
    "GET /v1/usage": {422},
    # A batch's items are single-job bodies (task params, inputs, installed models), and its cursors are opaque.
    "POST /v1/batches": {400, 422},
    "GET /v1/batches": {422},
    "GET /v1/batches/{batch_id}/jobs": {422},
    # tus 1.0: Tus-Resumable must be 1.0.0 (412), Upload-Length within the cap (413), PATCH bodies
    # application/offset+octet-stream at the upload's offset (415, 409), checksums that match (460).
    "POST /v1/uploads": {400, 412, 413, 415, 422},
    "HEAD /v1/uploads/{upload_id}": {412},
    "DELETE /v1/uploads/{upload_id}": {412},
    "PATCH /v1/uploads/{upload_id}": {400, 409, 412, 413, 415, 460},
}


def _fuzz(live_api: _LiveApi, operation: Any, mode: GenerationMode) -> list[str]:
    """Every check on `max_examples` requests of one kind; the failures found, one line each."""
    label = f"{operation.method.upper()} {operation.path}"
    allowed_rejections = CHECKED_BEYOND_THE_SCHEMA.get(label, set())
    query_names = {parameter.name for parameter in operation.iter_parameters() if parameter.location == "query"}
    found: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    # derandomize: the same examples on every run, so CI sees what this machine saw (no flaky verdicts).
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    def check(case: Any) -> None:
        response = case.call(base_url=live_api.base_url, headers=live_api.headers, timeout=30)
        if response.status_code == 503 and response.json().get("code") in DESIGNED_503:
            return
        try:
            case.validate_response(response, headers=live_api.headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                if isinstance(failure, RejectedPositiveData) and response.status_code in allowed_rejections:
                    continue
                # An unknown query parameter is ignored, as HTTP APIs do (OpenAPI has no way to say "no others"), and
                # an empty array serialises to no parameter at all: neither is a request the server could refuse.
                query = case.query or {}
                if isinstance(failure, AcceptedNegativeData) and (
                    set(query) - query_names or any(value == [] for value in query.values())
                ):
                    continue
                summary = str(failure).splitlines()[0]
                found.append(f"{label} [{mode.value}] {case.query} {response.status_code}: {summary}")

    try:
        check()
    except Unsatisfiable:
        pass  # no schema-violating request exists for an operation without parameters or body
    return found


def test_schema_matches_the_server(live_api: _LiveApi) -> None:
    """Every schemathesis check, on schema-valid and schema-violating requests: no 5xx, and every status code,
    content type, header and body the server answers is the one the document declares."""
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")
    tested, found = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/billing/stripe-webhook":
            continue  # signed by Stripe: fuzzing it only exercises the signature check (tests/test_billing.py)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            found += _fuzz(live_api, operation, mode)
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /v1/jobs" in tested and "GET /v1/jobs/{job_id}" in tested
    assert not found, "\n".join(sorted(set(found)))


async def test_every_error_answer_is_documented_with_the_media_type_sent(client: Any) -> None:
    """Each 4xx/5xx of every operation: a schema under application/problem+json, or, on the OpenAI-compatible
    routes, OpenAI's error object under application/json; FastAPI's validation error body appears nowhere."""
    document = (await client.get("/openapi.json")).json()
    checked = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status[0] not in "45":
                    continue
                content = response["content"]
                if path.startswith("/v1/audio/"):
                    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIError"}
                else:
                    assert list(content) == ["application/problem+json"], (path, status, content)
                    assert content["application/problem+json"]["schema"]["$ref"].startswith("#/components/schemas/")
                checked += 1
    assert checked > 100
    assert "HTTPValidationError" not in document["components"]["schemas"]
    submit = document["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"400", "401", "402", "403", "408", "409", "413", "415", "422", "429", "503"} <= set(submit)
