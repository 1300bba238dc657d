"""The benchmark's API server process: the app exactly as `studio serve` wires it, configured from the environment.

Run by path (`python bench/api/serve.py`), never imported from the bench: it imports only `api`, so with
PYTHONPATH pointing at another checkout (`bench.api.run --baseline DIR`) it serves that checkout's code. Settings come
from STUDIO_* / DATABASE_URL as for `studio serve`. It binds a free port on 127.0.0.1, prints it on stdout, and serves
until its stdin reaches end of file (the bench closed it, or died).
"""

from __future__ import annotations

import asyncio
import socket
import sys


def main() -> None:
    import uvicorn

    from api.main import create_app
    from api.settings import Settings
    from api.wiring import background_services, local_state

    settings = Settings()
    # Binding here makes the port race-free. IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP; with proto 0, Nagle plus delayed ACKs adds ~40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)

    async def serve() -> None:
        async with local_state(settings) as state:
            app = create_app(state, background=background_services(state))
            # No access log: one stderr line per request would be part of the measurement and is not the API.
            config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
            server = uvicorn.Server(config)
            loop = asyncio.get_running_loop()

            def stop() -> None:
                loop.remove_reader(sys.stdin.fileno())
                server.should_exit = True

            # Not SIGTERM: uvicorn re-raises a captured SIGTERM after its shutdown, which kills this process before
            # local_state's cleanup stops the workers. End of file on stdin also stops us if the bench dies.
            loop.add_reader(sys.stdin.fileno(), stop)
            await server.serve(sockets=[sock])

    asyncio.run(serve())


if __name__ == "__main__":
    main()
