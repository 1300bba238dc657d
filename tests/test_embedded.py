"""The embedded Postgres outlives a killed API only until the next clean shutdown (real `studio serve` processes)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from db.embedded import pid_is_running
from tests.serve_support import Serve


def test_a_killed_api_does_not_leave_the_embedded_postgres_running_forever() -> None:
    # Not under pytest's tmp_path: when run as root, pgserver runs Postgres as another user, who must reach it.
    tmp_path = Path(tempfile.mkdtemp(prefix="studio-test-serve-"))
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL" and not key.startswith("STUDIO_")}
    env |= {
        "STUDIO_STATE_DIR": str(tmp_path / "state"),
        "STUDIO_ENGINES": "builtin",
        "STUDIO_SECRET_KEY": "test-secret-key-not-for-production-000000000000",
    }
    pgdata = tmp_path / "state" / "postgres"
    first = Serve(env, tmp_path / "serve.log")
    postmaster: int | None = None
    try:
        first.wait_healthy()
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        first.kill()
        # SIGKILL runs no cleanup: the server stays up and pgserver's handle file still lists the dead API.
        assert pid_is_running(postmaster)

        second = Serve(env, tmp_path / "serve.log")
        second.wait_healthy()
        assert int((pgdata / "postmaster.pid").read_text().split()[0]) == postmaster  # it attached to the same one
        assert second.stop() == 0, second.tail()
        # The clean shutdown stopped the server it used (pg_ctl stop -w returns once the postmaster is gone).
        assert not pid_is_running(postmaster), second.tail()
        assert not (pgdata / "postmaster.pid").exists()
    finally:
        first.process.kill()
        if postmaster is not None and pid_is_running(postmaster):
            os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown: never leak a server from a failed run
        shutil.rmtree(tmp_path, ignore_errors=True)
