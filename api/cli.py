"""`studio`: run the API locally, manage the database and weights, and use a running API from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from api.settings import Settings

# In the state folder: the URL `studio serve` listens on, which the client commands use when STUDIO_API_URL is unset
# (so `PORT=8765 bash scripts/serve.sh` and then `studio submit` reach the same server).
SERVED_URL_FILE = "api_url"
DEFAULT_API_URL = "http://127.0.0.1:8000"


def _cmd_migrate(args: argparse.Namespace) -> int:
    from api.database import resolve_database_url
    from db.migrate import migrate

    settings = Settings()
    database_url, server = resolve_database_url(settings)
    applied = migrate(database_url)
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    if server is not None:
        server.cleanup()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from api.wiring import background_services, local_state

    overrides: dict[str, Any] = {}
    if args.workers is not None:
        overrides["local_workers"] = args.workers
    settings = Settings(**overrides)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn re-raises a caught SIGTERM/SIGINT once it has shut down, which would kill the process before
            # local_state stops the worker processes and the embedded Postgres: shut down, then exit normally.
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    served_url = settings.state_dir / SERVED_URL_FILE

    async def serve() -> None:
        async with local_state(settings) as state:
            app = create_app(state, background=background_services(state))
            config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", proxy_headers=True)
            served_url.parent.mkdir(parents=True, exist_ok=True)
            served_url.write_text(f"http://{host}:{args.port}\n")
            try:
                await Server(config).serve()
            finally:
                served_url.unlink(missing_ok=True)

    asyncio.run(serve())
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from api.security import ensure_user, mint_local_token
    from api.wiring import local_state
    from db import ledger

    settings = Settings()
    if settings.supabase_url:
        print("studio token is for local mode; with SUPABASE_URL set, users sign in through Supabase", file=sys.stderr)
        return 2

    async def run() -> str:
        async with local_state(settings) as state:
            user_id = await ensure_user(state.pool, state.settings, args.email)
            if args.credits is not None:
                async with state.pool.connection() as conn:
                    current = await ledger.balance(conn, user_id)
                    if current.available < args.credits:
                        # A fresh key per top-up: each run is its own business event.
                        await ledger.adjust(
                            conn,
                            user_id,
                            f"topup:{user_id}:{uuid.uuid4()}",
                            args.credits - current.available,
                            note="studio token --credits",
                        )
            return mint_local_token(settings, state.signing_key, user_id, args.email)

    token = asyncio.run(run())
    print(token)
    if args.curl:
        base = settings.public_base_url.rstrip("/")
        print(f"\ncurl -s -H 'Authorization: Bearer {token}' {base}/v1/credits", file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from inference import models

    settings = Settings()
    if args.models_command == "list":
        for entry in models.status(settings.weights_path, verify=not args.fast):
            print(f"{entry.key:32} {entry.state:13} {entry.detail}".rstrip())
        return 0
    try:
        pulled = models.pull(args.names or None, settings.weights_path, progress=_pull_progress())
    except models.ModelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(pulled)} model(s) present in {settings.weights_path}")
    return 0


def _pull_progress() -> Any:
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(label: str, done: int, total: int | None) -> None:
        bar = bars.get(label) or bars.setdefault(label, tqdm(total=total, unit="B", unit_scale=True, desc=label))
        bar.update(done - bar.n)

    return progress


def _api_url() -> str:
    """STUDIO_API_URL, else where a local `studio serve` listens (its state folder says), else the default port."""
    if os.environ.get("STUDIO_API_URL"):
        return os.environ["STUDIO_API_URL"]
    try:
        return (Settings().state_dir / SERVED_URL_FILE).read_text().strip() or DEFAULT_API_URL
    except OSError:
        return DEFAULT_API_URL


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=None, help="the API's URL (default: STUDIO_API_URL, else the served one)")
    parser.add_argument("--token", default=os.environ.get("STUDIO_TOKEN"))


def _cmd_client(args: argparse.Namespace) -> int:
    import httpx

    from api import client

    if not args.token:
        print(
            "error: set STUDIO_TOKEN (or pass --token); `studio token --email you@example.com` makes one locally",
            file=sys.stderr,
        )
        return 2
    api = client.StudioClient(args.api or _api_url(), args.token)
    try:
        if args.command == "submit":
            params = dict(_parse_param(item) for item in args.param)
            return client.submit(
                api,
                args.task,
                Path(args.file) if args.file else None,
                params,
                wait=args.wait,
                out_dir=Path(args.out) if args.out else None,
                reference=args.reference,
                resumable_over=(
                    args.resumable_over
                    if args.resumable_over is not None
                    else Settings().resumable_upload_threshold_bytes
                ),
            )
        if args.command == "jobs":
            return client.list_jobs(api, status=args.status, task=args.task, limit=args.limit)
        return client.show_credits(api, ledger_entries=args.ledger)
    except client.ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.api}: {exc}", file=sys.stderr)
        return 1


def _parse_param(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {item!r}")
    try:
        return key, json.loads(raw)  # numbers, booleans, lists
    except json.JSONDecodeError:
        return key, raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", help="apply db/migrations to DATABASE_URL or the embedded server").set_defaults(
        handler=_cmd_migrate
    )

    serve = commands.add_parser("serve", help="the API with its local worker pool")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None, help="local worker processes")
    serve.set_defaults(handler=_cmd_serve)

    token = commands.add_parser("token", help="local mode: create or find a user and print a bearer token")
    token.add_argument("--email", required=True)
    token.add_argument("--credits", type=int, default=None, help="top the balance up to this many credits")
    token.add_argument("--curl", action="store_true", help="also print a curl line that uses the token")
    token.set_defaults(handler=_cmd_token)

    models_parser = commands.add_parser("models", help="model weights named in models.lock")
    models_commands = models_parser.add_subparsers(dest="models_command", required=True)
    pull = models_commands.add_parser("pull", help="download weights into the cache, verifying sha256")
    pull.add_argument("names", nargs="*")
    pull.set_defaults(handler=_cmd_models)
    listing = models_commands.add_parser("list", help="show which weights are present")
    listing.add_argument("--fast", action="store_true", help="skip hashing files already present")
    listing.set_defaults(handler=_cmd_models)

    submit = commands.add_parser("submit", help="submit a job to a running API and follow it")
    submit.add_argument("task")
    submit.add_argument("file", nargs="?")
    submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument(
        "--reference", metavar="FILE_OR_URL", help="master: a reference track to match (a file, or an https URL)"
    )
    submit.add_argument("--wait", action="store_true", help="follow the job to the end with a progress bar")
    submit.add_argument(
        "--resumable-over",
        type=int,
        default=None,
        metavar="BYTES",
        help="send files larger than this as a resumable upload (default: STUDIO_RESUMABLE_UPLOAD_THRESHOLD_BYTES)",
    )
    submit.add_argument("--out", help="download outputs into this folder (implies --wait)")
    _client_args(submit)
    submit.set_defaults(handler=_cmd_client)

    jobs = commands.add_parser("jobs", help="list your jobs")
    jobs.add_argument("--status")
    jobs.add_argument("--task")
    jobs.add_argument("--limit", type=int, default=20)
    _client_args(jobs)
    jobs.set_defaults(handler=_cmd_client)

    credits = commands.add_parser("credits", help="show your balance")
    credits.add_argument("--ledger", action="store_true", help="also list ledger entries")
    _client_args(credits)
    credits.set_defaults(handler=_cmd_client)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
