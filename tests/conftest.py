"""Shared fixtures: one embedded Postgres per test run, and a fresh migrated database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from db import embedded
from db.migrate import migrate

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps, live data folder included.
    folder = Path(tempfile.mkdtemp(prefix="studio-test-pg-"))
    server = embedded.start(folder / "data")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(pg_server: Any) -> str:
    """Migrated once; each test's database is a copy of it (CREATE DATABASE ... TEMPLATE is ~10x faster)."""
    name = f"template_{uuid.uuid4().hex[:8]}"
    migrate(embedded.create_database(pg_server, name))
    return name


@pytest.fixture
def database_url(pg_server: Any, template_database: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield embedded.create_database(pg_server, name, template=template_database)
    embedded.drop_database(pg_server, name)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        yield connection


def require_shared_data(folder: Path = SHARED_DATA) -> Path:
    """The shared sample files. Absent on a developer machine: the test skips (with its reason, `pytest -rs`); absent
    in CI (`CI=true`, as GitHub Actions and most CI services set it): the test fails, so a missing data folder cannot
    turn into a green run that tested nothing."""
    if not folder.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{folder} is absent, and CI=true: the tests that need it must run in CI")
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()


# ---- API harness: the real app on the test database, local storage, the local worker pool, builtin engines ----


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Any:
    from api.settings import Settings

    return Settings(
        database_url=database_url,
        state_dir=tmp_path / "state",
        engines="builtin",
        secret_key="test-secret-key-not-for-production-000000000000",
        public_base_url="http://testserver",
        stripe_secret_key=None,
        stripe_webhook_secret=None,
    )


@pytest.fixture
async def app_state(settings: Any) -> AsyncIterator[Any]:
    """The collaborators exactly as local mode wires them (api.wiring.local_state), on this test's database."""
    from api.wiring import local_state

    async with local_state(settings) as state:
        yield state


@pytest.fixture
async def client(app_state: Any) -> AsyncIterator[Any]:
    """An httpx client speaking real HTTP semantics to the ASGI app, with its lifespan (background loops) running."""
    import httpx

    from api.main import create_app
    from api.wiring import background_services

    app = create_app(app_state, background=background_services(app_state))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def _make_user(app_state: Any, email: str) -> dict[str, Any]:
    from api.security import ensure_user, mint_local_token

    user_id = await ensure_user(app_state.pool, app_state.settings, email)
    token = mint_local_token(app_state.settings, app_state.signing_key, user_id, email)
    return {"id": user_id, "email": email, "token": token, "headers": {"Authorization": f"Bearer {token}"}}


@pytest.fixture
async def alice(app_state: Any) -> dict[str, Any]:
    """A local user with the welcome grant and a bearer token: {'id', 'email', 'token', 'headers'}."""
    return await _make_user(app_state, "alice@example.com")


@pytest.fixture
async def bob(app_state: Any) -> dict[str, Any]:
    return await _make_user(app_state, "bob@example.com")
