"""API benchmark (issue 3): submit and status-poll throughput and latency of the real app over real HTTP.

    python -m bench.api.run [--clients 1 8 32] [--requests 300] [--seconds 30] [--repeat 3]
                            [--defer-dispatch] [--profile DIR]

One command, no setup: an embedded Postgres in a temp folder, migrated; the app built as `studio serve` builds it
(`local_state` + `create_app` + background services, builtin engines, one local worker) and served by uvicorn in a
separate process (so client and server share neither an event loop nor a GIL); one user and token per simulated
client with plenty of credits, and fair-use limits set high so the benchmark measures the API, not the limits
(the rate-limit upsert still runs on every request). Then, at each concurrency level, `--repeat` bounded rounds
(at most `--requests` requests or `--seconds` seconds each) of:
  submit-multipart  POST /v1/jobs, enhance on a 1.5 s wav upload (parse, probe, store, hold, dispatch)
  submit-json       POST /v1/jobs, a JSON `generate` body (no upload, no probe)
  get-job           GET /v1/jobs/{id} of the client's own jobs
Each client is its own user with its own connection. Figures are medians over the rounds. The CPU columns are
milliseconds of CPU per successful request, read from /proc, for the API process, Postgres, the worker pool and
this client process: with 2 cores they show who competes for the CPU. By default every job is dispatched and the
worker runs builtin jobs during the submit rounds; `--defer-dispatch` (max_running_jobs_per_user=0) leaves jobs
queued, isolating the API's own cost. `--profile DIR` samples the API process with py-spy (when installed) during
the first round at the highest concurrency of each phase and prints where its CPU time goes.
Exits 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from api.settings import Settings
from db import embedded
from db.migrate import migrate

UNLIMITED = 1_000_000_000
CREDITS_PER_USER = 10_000_000
SERVER_START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
INPUT_SECONDS = 1.5
INPUT_RATE = 16_000
GENERATE_BODY = {"task": "generate", "params": {"prompt": "benchmark tone", "duration_s": 1.0, "steps": 1}}
CPU_COMPONENTS = ("api", "postgres", "workers", "client")
# .venv/bin is often not on PATH when the venv's python is run directly.
PY_SPY = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

Op = Callable[[int, int], Awaitable[httpx.Response]]  # (client index, its request number) -> response


# ---- the server, in its own process ----


def bench_settings(state_dir: Path, database_url: str, *, defer_dispatch: bool) -> Settings:
    return Settings(
        database_url=database_url,
        state_dir=state_dir,
        engines="builtin",
        local_workers=1,
        secret_key=secrets.token_urlsafe(48),
        supabase_url=None,
        stripe_secret_key=None,
        stripe_webhook_secret=None,
        rate_limit_per_minute=UNLIMITED,
        # 0 slots: dispatch_job still takes its lock and counts, but every job stays queued and no worker runs.
        max_running_jobs_per_user=0 if defer_dispatch else UNLIMITED,
    )


def serve(settings: Settings, port_out: Connection, stop_in: Connection) -> None:
    """The child process: bind a free port, report it, and serve the app exactly as `studio serve` wires it, until
    `stop_in` reaches end of file (the parent closed it, or died)."""
    import uvicorn

    from api.main import create_app
    from api.wiring import background_services, local_state

    # Binding here (not picking a port in the parent and hoping it stays free) makes the port race-free.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with proto 0, Nagle
    # plus delayed ACKs adds ~40 ms to every response (uvicorn binding host/port itself gets this right).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port_out.send(sock.getsockname()[1])
    port_out.close()

    async def main() -> None:
        async with local_state(settings) as state:
            app = create_app(state, background=background_services(state))
            # No access log: one stderr line per request would be part of the measurement and is not the API.
            config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
            server = uvicorn.Server(config)
            loop = asyncio.get_running_loop()

            def stop() -> None:
                loop.remove_reader(stop_in.fileno())
                server.should_exit = True

            # Not SIGTERM: uvicorn re-raises a captured SIGTERM after its shutdown, which kills this process before
            # local_state's cleanup and orphans the worker pool. A pipe also stops us if the parent dies.
            loop.add_reader(stop_in.fileno(), stop)
            await server.serve(sockets=[sock])

    asyncio.run(main())


@dataclass
class Server:
    process: multiprocessing.process.BaseProcess
    base_url: str
    stop_out: Connection

    @classmethod
    def start(cls, settings: Settings) -> Server:
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        stop_in, stop_out = context.Pipe(duplex=False)
        process = context.Process(target=serve, args=(settings, send, stop_in), name="bench-api-server")
        process.start()
        send.close()
        stop_in.close()
        try:
            if not receive.poll(SERVER_START_TIMEOUT_S):
                raise EOFError
            port = receive.recv()
        except EOFError:
            process.kill()
            process.join(10)
            raise RuntimeError(f"the server process did not report its port (exit code {process.exitcode})") from None
        server = cls(process, f"http://127.0.0.1:{port}", stop_out)
        try:
            server.wait_healthy()
        except BaseException:
            server.stop()
            raise
        return server

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with httpx.Client(base_url=self.base_url, timeout=5) as http:
            while time.monotonic() < deadline:
                if not self.process.is_alive():
                    raise RuntimeError(f"the server exited during start-up (exit code {self.process.exitcode})")
                try:
                    if http.get("/v1/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.2)  # polling a process we do not control; no timing is measured here
        raise RuntimeError(f"/v1/health did not answer 200 within {SERVER_START_TIMEOUT_S:g} s")

    def stop(self) -> None:
        self.stop_out.close()  # end of file: uvicorn shuts down, then local_state stops the worker pool and the pool
        self.process.join(60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


async def create_users(settings: Settings, count: int) -> list[str]:
    """`count` users with tokens and CREDITS_PER_USER credits each, through the same calls as `studio token`."""
    from api.security import mint_local_token
    from api.wiring import ensure_user, local_state
    from db import ledger

    tokens = []
    async with local_state(settings) as state:
        for index in range(count):
            email = f"bench{index}@example.com"
            user_id = await ensure_user(state, email)
            async with state.pool.connection() as conn:
                await ledger.adjust(conn, user_id, f"bench:{user_id}", CREDITS_PER_USER, note="bench.api")
            tokens.append(mint_local_token(settings, state.signing_key, user_id, email))
    return tokens


# ---- CPU accounting from /proc ----


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0  # exited between listing and reading
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    found, stack = [], list(children[root])
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children[pid])
    return found


@dataclass
class CpuMeter:
    """CPU seconds used so far by each component. Postgres backends are the API's pooled connections (long-lived),
    so the counters of exited processes are not a concern between two snapshots."""

    api_pid: int
    postmaster_pid: int

    def snapshot(self) -> dict[str, float]:
        if not Path("/proc/self/stat").exists():
            return {}
        times = os.times()
        return {
            "api": _cpu_seconds(self.api_pid),
            "workers": sum(_cpu_seconds(pid) for pid in _descendants(self.api_pid)),
            "postgres": sum(_cpu_seconds(pid) for pid in [self.postmaster_pid, *_descendants(self.postmaster_pid)]),
            "client": times.user + times.system,
        }


# ---- measurement ----


@dataclass
class Round:
    latencies: list[float]
    ok: int
    errors: Counter[str]
    seconds: float
    cpu: dict[str, float]  # CPU seconds per component during the round

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


async def run_round(
    clients: int, op: Op, expect: int, total: int, seconds: float, meter: CpuMeter, on_ok: Callable[[int, Any], None]
) -> Round:
    """`clients` concurrent loops issuing `op` until `total` requests were issued or `seconds` elapsed."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client_loop(index: int) -> None:
        nonlocal issued
        number = 0
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            number += 1
            started = time.perf_counter()
            try:
                response = await op(index, number)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            elapsed = time.perf_counter() - started
            if response.status_code == expect:
                latencies.append(elapsed)
                on_ok(index, response)
            else:
                code = response.json().get("code", "") if response.content else ""
                errors[f"HTTP {response.status_code} {code}".strip()] += 1

    before = meter.snapshot()
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(index) for index in range(clients)))
    elapsed = time.perf_counter() - started
    after = meter.snapshot()
    cpu = {name: after[name] - before[name] for name in after}
    return Round(latencies, len(latencies), errors, elapsed, cpu)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 300 samples is the 297th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Row:
    clients: int
    rounds: list[Round] = field(default_factory=list)

    def cells(self) -> list[str]:
        def median(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")

        rounds = [r for r in self.rounds if r.latencies]
        ops = sum(r.ok + sum(r.errors.values()) for r in self.rounds)
        errors = sum(sum(r.errors.values()) for r in self.rounds)
        cells = [
            str(self.clients),
            str(ops),
            str(sum(r.ok for r in self.rounds)),
            str(errors),
            f"{median([r.rate for r in rounds]):.1f}",
            f"{median([percentile(r.latencies, 50) * 1000 for r in rounds]):.1f}",
            f"{median([percentile(r.latencies, 99) * 1000 for r in rounds]):.1f}",
        ]
        for name in CPU_COMPONENTS:
            per_op = [r.cpu[name] / r.ok * 1000 for r in rounds if name in r.cpu]
            cells.append(f"{median(per_op):.2f}" if per_op else "-")
        return cells


HEADER = ["clients", "ops", "ok", "errors", "req/s", "p50 ms", "p99 ms", *(f"cpu {n} ms/op" for n in CPU_COMPONENTS)]


def print_table(title: str, rows: list[Row]) -> None:
    table = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    print(f"\n{title}")
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    failures: Counter[str] = Counter()
    for row in rows:
        for r in row.rounds:
            failures.update(r.errors)
    for reason, count in failures.most_common():
        print(f"  error: {count} x {reason}")


# ---- profiling the API process ----


class Profiler:
    """py-spy sampling the API process (CPU only: idle threads are left out) into a collapsed-stacks file."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [
                PY_SPY or "py-spy",
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        if not self.output.exists():
            print(f"  py-spy wrote nothing: {stderr.strip()[-500:]}")
            return
        summarize_profile(self.output)


def summarize_profile(path: Path, top: int = 15) -> None:
    """Print the functions holding the most samples, inclusive (anywhere on the stack) and self (on top)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # "function (path/file.py:line)" -> "function (file.py)": one entry per function, not per line.
        frames = [_frame_name(frame) for frame in stack.split(";") if not frame.startswith("process ")]
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        print("  py-spy recorded no samples")
        return
    print(f"  py-spy: {total} CPU samples of the API process ({path}); top inclusive / self:")
    for name, count in inclusive.most_common(top):
        print(f"    {100 * count / total:5.1f}% incl  {100 * own[name] / total:5.1f}% self  {name}")
    print("  top self:")
    for name, count in own.most_common(top):
        print(f"    {100 * count / total:5.1f}% self  {name}")


def _frame_name(frame: str) -> str:
    function, _, location = frame.partition(" (")
    location = location.rstrip(")").rsplit(":", 1)[0]
    parts = Path(location).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else location
    return f"{function} ({short})"


# ---- the phases ----


def make_wav() -> bytes:
    t = np.arange(int(INPUT_SECONDS * INPUT_RATE)) / INPUT_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, tone.astype(np.float32), INPUT_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def benchmark(args: argparse.Namespace, base_url: str, tokens: list[str], meter: CpuMeter) -> int:
    wav = make_wav()
    job_ids: list[list[str]] = [[] for _ in tokens]
    http = [
        httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=1),  # one client = one connection, like a real caller
        )
        for token in tokens
    ]

    async def submit_multipart(index: int, _: int) -> httpx.Response:
        files = {"file": ("tone.wav", wav, "audio/wav")}
        return await http[index].post("/v1/jobs", data={"task": "enhance", "params": "{}"}, files=files)

    async def submit_json(index: int, _: int) -> httpx.Response:
        return await http[index].post("/v1/jobs", json=GENERATE_BODY)

    async def get_job(index: int, number: int) -> httpx.Response:
        ids = job_ids[index]
        return await http[index].get(f"/v1/jobs/{ids[number % len(ids)]}")

    def keep_id(index: int, response: httpx.Response) -> None:
        job_ids[index].append(response.json()["id"])

    def ignore(index: int, response: httpx.Response) -> None:
        pass

    phases: list[tuple[str, str, Op, int, Callable[[int, Any], None]]] = [
        (
            "submit-multipart",
            f"POST /v1/jobs multipart: enhance, {INPUT_SECONDS:g} s wav ({len(wav)} bytes)",
            submit_multipart,
            202,
            keep_id,
        ),
        ("submit-json", "POST /v1/jobs JSON: generate (no upload)", submit_json, 202, keep_id),
        ("get-job", "GET /v1/jobs/{id} (the client's own jobs)", get_job, 200, ignore),
    ]
    mode = "jobs stay queued (--defer-dispatch)" if args.defer_dispatch else "jobs dispatched to 1 local worker"
    print(
        f"server {base_url}; {mode}; {args.repeat} round(s) per level, each at most {args.requests} requests "
        f"or {args.seconds:g} s; figures are medians over rounds; cpu = CPU ms per successful request"
    )
    failed = 0
    try:
        for name, title, op, expect, on_ok in phases:
            if args.only and name not in args.only:
                continue
            top = max(args.clients)
            warm = await run_round(top, op, expect, args.warmup * top, args.seconds, meter, on_ok)
            failed += sum(warm.errors.values())
            rows = []
            for clients in args.clients:
                row = Row(clients)
                for index in range(args.repeat):
                    profiler = None
                    if args.profile and clients == top and index == 0:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        profiler = Profiler(meter.api_pid, args.profile / f"{name}-{clients}.txt")
                    row.rounds.append(await run_round(clients, op, expect, args.requests, args.seconds, meter, on_ok))
                    if profiler is not None:
                        print(f"\nprofile of {name} at {clients} clients:")
                        profiler.stop()
                rows.append(row)
                failed += sum(sum(r.errors.values()) for r in row.rounds)
            print_table(f"{name}: {title}", rows)
            if warm.errors:
                print(f"  warm-up errors: {dict(warm.errors)}")
    finally:
        await asyncio.gather(*(client.aclose() for client in http))
    return failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=300, help="requests per round (upper bound)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time limit per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per level; the table shows medians")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up requests per client before each phase")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["submit-multipart", "submit-json", "get-job"],
        help="run only these phases (get-job polls the jobs the submit phases created)",
    )
    parser.add_argument(
        "--defer-dispatch",
        action="store_true",
        help="leave jobs queued (max_running_jobs_per_user=0): the API's cost without the worker",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the API process into this folder and summarise it")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.requests < 1 or args.repeat < 1 or args.seconds <= 0 or args.warmup < 1:
        parser.error("--clients, --requests, --repeat and --warmup must be >= 1 and --seconds > 0")
    if args.only and "get-job" in args.only and len(args.only) == 1:
        parser.error("get-job needs jobs: run it with a submit phase")
    if args.profile and PY_SPY is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy==0.4.1 into the venv)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="studio-bench-api-"))
    pg = None
    server: Server | None = None
    try:
        pg = embedded.start(folder / "postgres")
        database_url = embedded.database_url(pg)
        migrate(database_url)
        settings = bench_settings(folder / "state", database_url, defer_dispatch=args.defer_dispatch)
        tokens = asyncio.run(create_users(settings, max(args.clients)))
        server = Server.start(settings)
        assert server.process.pid is not None
        postmaster = int((Path(pg.pgdata) / "postmaster.pid").read_text().split()[0])
        failed = asyncio.run(benchmark(args, server.base_url, tokens, CpuMeter(server.process.pid, postmaster)))
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    if failed:
        print(f"\nFAILED: {failed} request(s) errored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
