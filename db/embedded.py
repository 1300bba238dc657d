"""The embedded Postgres used when DATABASE_URL is unset: a pgserver-managed server in a git-ignored folder.

pgserver keeps one postmaster per data folder and reuses it across processes and runs. Each process using it is
listed in the folder's handle file, and the last one to exit stops the server (cleanup_mode="stop"), so
`studio serve` shuts it down cleanly. A process killed outside Python (SIGKILL, OOM) never removes itself from that
list, and pgserver would then never stop the server again: `start` prunes such dead entries first.
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
    _prune_dead_handles(data_dir)
    return pgserver.get_server(data_dir, cleanup_mode="stop" if stop_on_exit else None)


def _prune_dead_handles(data_dir: Path) -> list[int]:
    """Drop the pids of exited processes from pgserver's handle file (`.handle_pids.json`); returns them."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = DiskList(data_dir.expanduser().resolve() / ".handle_pids.json")
    with PostgresServer._lock:  # pgserver's own inter-process lock around every change to that file
        pids = handles.get()
        dead = [pid for pid in pids if not pid_is_running(pid)]
        if dead:
            handles.put([pid for pid in pids if pid not in dead])
    return dead


def database_url(server: Any, dbname: str = "postgres", user: str = "postgres") -> str:
    """A libpq URL for `dbname` on the embedded server (it listens on a Unix socket in its data folder), as `user`
    (the superuser `postgres` unless told otherwise; the socket trusts local connections)."""
    socket_dir = quote(str(server.pgdata), safe="")
    return f"postgresql://{quote(user, safe='')}@/{dbname}?host={socket_dir}"


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


def pid_is_running(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (an exited orphan nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill()
