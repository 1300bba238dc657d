"""The embedded Postgres used when DATABASE_URL is unset: a pgserver-managed server in a git-ignored folder.

pgserver keeps one postmaster per data folder and reuses it across processes and runs; we stop it only when
the process that started it exits (cleanup_mode="stop"), so `studio serve` shuts it down cleanly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

# pgserver's platformdirs import warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)


def start(data_dir: Path, *, stop_on_exit: bool = True) -> Any:
    """Start (or attach to) the server for `data_dir`; returns the pgserver handle."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(data_dir, cleanup_mode="stop" if stop_on_exit else None)


def database_url(server: Any, dbname: str = "postgres") -> str:
    """A libpq URL for `dbname` on the embedded server (it listens on a Unix socket in its data folder)."""
    socket_dir = quote(str(server.pgdata), safe="")
    return f"postgresql://postgres@/{dbname}?host={socket_dir}"


def create_database(server: Any, dbname: str, *, template: str | None = None) -> str:
    """Create `dbname` (optionally as a copy of `template`) and return its URL."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(database_url(server), autocommit=True) as admin:
        admin.execute(statement)
    return database_url(server, dbname)


def drop_database(server: Any, dbname: str) -> None:
    with psycopg.connect(database_url(server), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
