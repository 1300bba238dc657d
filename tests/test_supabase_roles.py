"""Supabase's real roles: the migrations applied by a non-superuser `postgres` on a database set up the way Supabase
sets one up leave anon and authenticated nothing beyond what the row-level-security policies grant, on every table,
sequence and function in schema public (whichever migration created it), and local sign-in works against Supabase's
auth.users shape (email unique only through a partial index).

Supabase's setup, reproduced here as the superuser: the API roles anon, authenticated and service_role; the auth
schema, owned by Supabase, with auth.users (`is_sso_user`, unique index `users_email_partial_key ON (email) WHERE
is_sso_user = false`: supabase/auth migrations/20221215195500_modify_users_email_unique_index.up.sql) and
auth.uid(); and public-schema default privileges that grant ALL on new tables, sequences and functions to anon,
authenticated and service_role (supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql).
Its `postgres` role is not a superuser (CREATEROLE, CREATEDB, BYPASSRLS); here it is `supabase_like_postgres`.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from db import embedded
from db.migrate import MIGRATIONS_DIR, migrate

MIGRATOR = "supabase_like_postgres"
API_ROLES = ("anon", "authenticated")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
POLICY_COMMANDS = {"r": {"SELECT"}, "a": {"INSERT"}, "w": {"UPDATE"}, "d": {"DELETE"}}
ALL_COMMANDS = {"SELECT", "INSERT", "UPDATE", "DELETE"}

SUPABASE_SETUP = f"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{MIGRATOR}') THEN
    CREATE ROLE {MIGRATOR} LOGIN NOSUPERUSER CREATEROLE CREATEDB BYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$$;
CREATE SCHEMA auth;
CREATE TABLE auth.users (
  instance_id uuid,
  id uuid PRIMARY KEY,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  is_sso_user boolean NOT NULL DEFAULT false,
  created_at timestamptz
);
CREATE UNIQUE INDEX users_email_partial_key ON auth.users (email) WHERE (is_sso_user = false);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $fn$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$fn$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $fn$
  SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb
$fn$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $fn$
  SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')::text
$fn$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, {MIGRATOR};
GRANT ALL ON auth.users TO {MIGRATOR};
GRANT EXECUTE ON FUNCTION auth.uid(), auth.jwt(), auth.role() TO anon, authenticated, service_role, {MIGRATOR};
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public
  GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public
  GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public
  GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""

# What another migration might add later: every kind of object, each opened by the default privileges above.
LATER_MIGRATION = """
CREATE TABLE later_things (id bigserial PRIMARY KEY, user_id uuid NOT NULL, note text);
ALTER TABLE later_things ENABLE ROW LEVEL SECURITY;
CREATE POLICY later_things_owner_read ON later_things FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE SEQUENCE later_counter;
CREATE FUNCTION later_helper() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE VIEW later_view AS SELECT id FROM later_things;
"""


@pytest.fixture
def supabase_like(pg_server: Any) -> Iterator[tuple[str, str]]:
    """A fresh database set up like a Supabase project: its URLs as the non-superuser migrator and as the superuser
    (which plays PostgREST switching to the API roles)."""
    name = f"supa_{uuid.uuid4().hex[:10]}"
    admin_url = embedded.create_database(pg_server, name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(SUPABASE_SETUP)
        admin.execute(f"ALTER DATABASE {name} OWNER TO {MIGRATOR}")  # owns schema public (pg_database_owner)
    yield embedded.database_url(pg_server, name, user=MIGRATOR), admin_url
    embedded.drop_database(pg_server, name)


def open_grants(conn: psycopg.Connection) -> list[str]:
    """Every privilege anon or authenticated holds in schema public beyond what a policy gives it."""
    allowed: dict[tuple[str, str], set[str]] = {}
    policies = conn.execute(
        "SELECT c.oid::regclass::text, p.polcmd, r.rolname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid"
        " CROSS JOIN pg_roles r WHERE c.relrowsecurity AND r.rolname = ANY(%s)"
        " AND (r.oid = ANY(p.polroles) OR 0::oid = ANY(p.polroles))",
        (list(API_ROLES),),
    ).fetchall()
    for table, command, role in policies:
        allowed.setdefault((table, role), set()).update(POLICY_COMMANDS.get(command, ALL_COMMANDS))
    found: list[str] = []
    tables = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    ).fetchall()
    for (table,) in tables:
        for role in API_ROLES:
            for privilege in TABLE_PRIVILEGES:
                held = conn.execute(
                    "SELECT has_table_privilege(%s, %s::regclass, %s)"
                    " OR (%s IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')"
                    "     AND has_any_column_privilege(%s, %s::regclass, %s))",
                    (role, table, privilege, privilege, role, table, privilege),
                ).fetchone()
                if held and held[0] and privilege not in allowed.get((table, role), set()):
                    found.append(f"{role} {privilege} ON {table}")
    sequences = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'S'"
    ).fetchall()
    for (sequence,) in sequences:
        for role in API_ROLES:
            for privilege in ("USAGE", "SELECT", "UPDATE"):
                held = conn.execute("SELECT has_sequence_privilege(%s, %s, %s)", (role, sequence, privilege))
                if (row := held.fetchone()) and row[0]:
                    found.append(f"{role} {privilege} ON SEQUENCE {sequence}")
    routines = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public'"
    ).fetchall()
    for (routine,) in routines:
        for role in API_ROLES:
            held = conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, routine)).fetchone()
            if held and held[0]:
                found.append(f"{role} EXECUTE ON {routine}")
    return found


def objects_in_public(conn: psycopg.Connection) -> dict[str, set[str]]:
    relations = conn.execute(
        "SELECT c.relkind::text, c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S')"
    ).fetchall()
    routines = conn.execute(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
    ).fetchall()
    found: dict[str, set[str]] = {"r": set(), "v": set(), "S": set(), "f": {name for (name,) in routines}}
    for kind, name in relations:
        found.setdefault(kind, set()).add(name)
    return found


def without_rls(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity"
    ).fetchall()
    return [name for (name,) in rows]


def test_migrations_as_a_non_superuser_leave_the_api_roles_only_their_policies(
    supabase_like: tuple[str, str], tmp_path: Path
) -> None:
    migrator_url, admin_url = supabase_like
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    applied = migrate(migrator_url, folder)
    assert applied == sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
    with psycopg.connect(migrator_url) as migrator:
        assert migrator.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = objects_in_public(conn)
        # The scan sees the objects the review found open (so an empty scan cannot pass).
        assert {"schema_migrations", "ledger_entries", "jobs"} <= found["r"]
        assert "ledger_entries_id_seq" in found["S"]
        assert {"ledger_entries_append_only", "jobs_final_states_are_final", "jobs_bump_event_seq",
                "jobs_notify_event", "jobs_notify_local_work"} <= found["f"]  # fmt: skip
        assert open_grants(conn) == []
        assert without_rls(conn) == []
        # What the policies give is kept: a signed-in user reads (only) their own rows.
        assert conn.execute("SELECT has_table_privilege('authenticated', 'jobs', 'SELECT')").fetchone() == (True,)
        # The server side keeps its access.
        assert conn.execute("SELECT has_table_privilege('service_role', 'jobs', 'UPDATE')").fetchone() == (True,)

        # The attacks of the review, as the API roles.
        for role, statement in (
            ("anon", "TRUNCATE schema_migrations"),
            ("authenticated", "TRUNCATE schema_migrations"),
            ("anon", "SELECT nextval('ledger_entries_id_seq')"),
            ("anon", "SELECT setval('ledger_entries_id_seq', 1)"),
            ("authenticated", "SELECT jobs_notify_event()"),
        ):
            conn.execute(f"SET ROLE {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.execute("RESET ROLE")
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(applied),)

    # A later migration (another branch's tables, sequences, functions, views) is closed the same way.
    (folder / "9998_later_objects.sql").write_text(LATER_MIGRATION)
    assert migrate(migrator_url, folder) == ["9998_later_objects.sql"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = objects_in_public(conn)
        assert "later_things" in found["r"] and "later_view" in found["v"]
        assert {"later_counter", "later_things_id_seq"} <= found["S"] and "later_helper" in found["f"]
        assert open_grants(conn) == []
        # Its policy's SELECT stays; everything else the default privileges gave is gone.
        assert conn.execute(
            "SELECT has_table_privilege('authenticated', 'later_things', 'SELECT'),"
            " has_table_privilege('authenticated', 'later_things', 'INSERT'),"
            " has_table_privilege('anon', 'later_things', 'SELECT')"
        ).fetchone() == (True, False, False)


def test_the_local_database_is_closed_the_same_way(database_url: str) -> None:
    """Local mode migrates as the embedded superuser, without Supabase's default privileges: same result."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert "ledger_entries_id_seq" in objects_in_public(conn)["S"]
        assert open_grants(conn) == []
        assert without_rls(conn) == []


def test_open_grants_sees_each_kind_of_grant(database_url: str) -> None:
    """The check itself: a grant of each kind left open is reported."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("GRANT TRUNCATE ON schema_migrations TO anon")
        conn.execute("GRANT UPDATE (status) ON jobs TO authenticated")
        conn.execute("GRANT USAGE ON SEQUENCE ledger_entries_id_seq TO anon")
        conn.execute("GRANT EXECUTE ON FUNCTION jobs_notify_event() TO PUBLIC")
        assert sorted(open_grants(conn)) == sorted(
            [
                "anon TRUNCATE ON schema_migrations",
                "authenticated UPDATE ON jobs",
                "anon USAGE ON SEQUENCE ledger_entries_id_seq",
                "anon EXECUTE ON jobs_notify_event()",
                "authenticated EXECUTE ON jobs_notify_event()",
            ]
        )


async def test_local_sign_in_works_with_supabases_partial_email_index(supabase_like: tuple[str, str]) -> None:
    """`ON CONFLICT (email)` matches no constraint on Supabase's auth.users: first sign-ins racing for one email
    still end with one user and one account."""
    from api.security import ensure_user
    from api.settings import Settings

    migrator_url, _ = supabase_like
    migrate(migrator_url)
    settings = Settings(database_url=migrator_url, supabase_url=None, welcome_credits=100)
    async with AsyncConnectionPool(migrator_url, min_size=1, max_size=4, open=False) as pool:
        ids = await asyncio.gather(*(ensure_user(pool, settings, "Racer@Example.com") for _ in range(4)))
        async with pool.connection() as conn:
            users = await (await conn.execute("SELECT id FROM auth.users WHERE email = 'racer@example.com'")).fetchall()
            accounts = await (await conn.execute("SELECT available FROM accounts")).fetchall()
    assert len(set(ids)) == 1 and users == [(ids[0],)]
    assert accounts == [(100,)]
