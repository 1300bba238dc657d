"""Migrations apply once, are recorded with checksums, refuse edits, and RLS behaves as on Supabase."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from db import embedded, ledger
from db.migrate import MIGRATIONS_DIR, MigrationError, migrate


@pytest.fixture
def empty_database(pg_server):
    name = f"empty_{uuid.uuid4().hex[:10]}"
    url = embedded.create_database(pg_server, name)
    yield url
    embedded.drop_database(pg_server, name)


def test_migrate_applies_everything_once_then_is_a_no_op(empty_database):
    applied = migrate(empty_database)
    assert applied == sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
    assert migrate(empty_database) == []
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT name, length(checksum) FROM schema_migrations ORDER BY name").fetchall()
    assert [name for name, _ in rows] == applied and all(length == 64 for _, length in rows)


def test_an_applied_migration_that_was_edited_is_refused(empty_database, tmp_path: Path):
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    migrate(empty_database, folder)
    first = sorted(folder.glob("*.sql"))[1]
    first.write_text(first.read_text() + "\n-- edited after release\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_database, folder)


def test_a_failing_migration_leaves_nothing_behind(empty_database, tmp_path: Path):
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n")
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(empty_database, folder)
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        recorded = conn.execute("SELECT count(*) FROM schema_migrations WHERE name = '9999_broken.sql'").fetchone()
    assert recorded == (0,)


def test_bootstrap_keeps_existing_supabase_objects(empty_database):
    """On Supabase auth.uid() already exists (owned by Supabase): the bootstrap must not replace it."""
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA auth")
        conn.execute("CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, aud text)")
        conn.execute("CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT NULL::uuid $$")
    migrate(empty_database)
    with psycopg.connect(empty_database) as conn:
        body = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'uid'").fetchone()[0]
        columns = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'auth' AND table_name = 'users'"
        ).fetchone()[0]
    assert "NULL::uuid" in body and columns == 3


async def _as_authenticated(database_url: str, user_id: uuid.UUID) -> psycopg.AsyncConnection:
    """A connection that behaves like PostgREST serving a request with this user's verified JWT."""
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)  # so a failed statement keeps the role
    await conn.execute("SET ROLE authenticated")
    await conn.execute(
        "SELECT set_config('request.jwt.claims', %s, false)",
        (f'{{"sub": "{user_id}", "role": "authenticated", "aud": "authenticated"}}',),
    )
    return conn


async def test_rls_users_read_only_their_own_rows_and_write_nothing(conn, database_url):
    users = []
    for name in ("a", "b"):
        user_id = uuid.uuid4()
        await conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{name}@example.com"))
        await ledger.ensure_account(conn, user_id, welcome_grant=100)
        await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at)"
            " VALUES (%s, 'midi', '{}', 'basic-pitch', 5, now() + interval '1 hour')",
            (user_id,),
        )
        users.append(user_id)
    alice_id, bob_id = users

    alice = await _as_authenticated(database_url, alice_id)
    async with alice:
        for table in ("jobs", "ledger_entries", "accounts"):
            owners = await (await alice.execute(f"SELECT DISTINCT user_id FROM {table}")).fetchall()
            assert owners == [(alice_id,)], table
        for statement in (
            "UPDATE accounts SET available = 1000000",
            "INSERT INTO ledger_entries (user_id, kind, idempotency_key, available_delta, held_delta)"
            f" VALUES ('{alice_id}', 'grant', 'x', 1000, 0)",
            "DELETE FROM jobs",
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at)"
            f" VALUES ('{alice_id}', 'midi', '{{}}', 'basic-pitch', 0, now())",
            "SELECT * FROM stripe_events",
            "SELECT * FROM webhook_secrets",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await alice.execute(statement)

    anon = await psycopg.AsyncConnection.connect(database_url)
    async with anon:
        await anon.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await anon.execute("SELECT * FROM jobs")
    assert (await ledger.balance(conn, bob_id)).available == 100
