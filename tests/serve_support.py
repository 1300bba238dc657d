"""Servers for tests over real HTTP: a real `studio serve` process on 127.0.0.1 and a free port (for tests that kill
and restart the API), and the app served in-process by uvicorn on its own fresh database (`serve_in_process`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from db import embedded

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


class InProcessServer:
    """The app as `studio serve` wires it (api.wiring.local_state), served by uvicorn on a socket bound before
    start-up, in its own thread and event loop: tests drive it over real HTTP and reach its state through `call`."""

    def __init__(self, settings: Any, sock: socket.socket) -> None:
        self.settings, self.sock = settings, sock
        self.base_url = settings.public_base_url
        self.ready = threading.Event()
        self.state: Any = None
        self.server: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by the fixture instead of a silent hang
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        import uvicorn

        from api.main import create_app
        from api.wiring import background_services, local_state

        self.loop = asyncio.get_running_loop()
        async with local_state(self.settings) as state:
            self.state = state
            app = create_app(state, background=background_services(state))
            self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
            serving = asyncio.create_task(self.server.serve(sockets=[self.sock]))
            while not self.server.started and not serving.done():
                await asyncio.sleep(0.01)  # uvicorn offers no startup event to await
            self.ready.set()
            await serving

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop (its pool is bound to that loop)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(60)


def serve_in_process(
    pg_server: Any, template: str, prefix: str, server_cls: type[InProcessServer] = InProcessServer, **overrides: Any
) -> Iterator[Any]:
    """A `server_cls` on its own copy of the migrated template database and its own state folder, local mode with one
    worker and no Stripe, plus `overrides`; dropped again when the generator ends."""
    from api.settings import Settings

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    database_url = embedded.create_database(pg_server, name, template=template)
    folder = Path(tempfile.mkdtemp(prefix=f"studio-{prefix}-"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    defaults: dict[str, Any] = {
        "database_url": database_url,
        "state_dir": folder / "state",
        "local_workers": 1,
        "secret_key": f"{prefix}-test-key-not-for-production-{'0' * 24}",
        "public_base_url": f"http://127.0.0.1:{sock.getsockname()[1]}",
        "stripe_secret_key": None,
        "stripe_webhook_secret": None,
    }
    server = server_cls(Settings(**{**defaults, **overrides}), sock)
    server.thread.start()
    assert server.ready.wait(120), "the server did not start"
    if server.error is not None:
        raise server.error
    yield server
    server.stop()
    embedded.drop_database(pg_server, name)
    shutil.rmtree(folder, ignore_errors=True)
