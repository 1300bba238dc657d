"""A real `studio serve` process on 127.0.0.1 and a free port, for tests that kill and restart the API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serve:
    """`python -m api.cli serve` with `env`, its output in `log`; this repo first on the path."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Poll /v1/health until it answers 200 (bounded); fail with the server's log if it exits or times out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"studio serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/v1/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling a condition, bounded by `timeout`
        raise AssertionError(f"studio serve did not become healthy:\n{self.tail()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as a supervisor or Ctrl-C would, and wait for a clean exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]
