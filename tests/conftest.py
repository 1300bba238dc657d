"""Shared fixtures: one embedded Postgres per test run, and a fresh migrated database per test."""

from __future__ import annotations

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


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
