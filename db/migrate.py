"""Apply db/migrations/NNNN_name.sql in order, each in its own transaction, recording name and checksum, then
close schema public to Supabase's API roles (db/public_privileges.sql) whatever the migrations created.

A migration that was applied and then edited is refused: fix forward with a new file instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Not a numbered migration: it runs after every run, so it covers the objects of migrations not yet written.
PUBLIC_PRIVILEGES_SQL = Path(__file__).parent / "public_privileges.sql"
# Serialises concurrent `migrate` runs (several API processes starting at once).
_ADVISORY_LOCK_ID = 0x5354_5544_494F  # "STUDIO"


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration(path.name, path.read_text()) for path in files]


def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is pending; returns the names applied (empty when up to date)."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_ID,))
        try:
            # Not user data, but Supabase exposes public tables through its REST API: keep it closed.
            conn.execute("ALTER TABLE schema_migrations ENABLE ROW LEVEL SECURITY")
            applied = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
            for migration in migrations:
                recorded = applied.get(migration.name)
                if recorded is not None:
                    if recorded != migration.checksum:
                        raise MigrationError(
                            f"{migration.name} was edited after it was applied (checksum {recorded[:12]} in the "
                            f"database, {migration.checksum[:12]} on disk); add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)",
                        (migration.name, migration.checksum),
                    )
                applied_now.append(migration.name)
            with conn.transaction():
                conn.execute(PUBLIC_PRIVILEGES_SQL.read_text())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_ID,))
    return applied_now
