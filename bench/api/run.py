"""API benchmark (issues 3, 14, 15): latency of the real app over real HTTP, open loop by default.

    python -m bench.api.run [--rates 10 20 40 80 160] [--seconds 6] [--workers both|on|off] [--baseline DIR]
    python -m bench.api.run --closed-loop [--clients 1 8 32] [--requests 300] [--seconds 30] [--repeat 3] ...

One command, no setup: an embedded Postgres in a temp folder, migrated; the app built as `studio serve` builds it
(`local_state` + `create_app` + background services, builtin engines) by `bench/api/serve.py` in its own process
(client and server share neither an event loop nor a GIL), configured through the environment like `studio serve`;
users with plenty of credits and fair-use limits set high, so the benchmark measures the API, not the limits (the
rate-limit upsert still runs on every request). Requests go to 127.0.0.1 only. The operations:
  submit-multipart  POST /v1/jobs, enhance on a 1.5 s wav upload (parse, probe, store, hold, dispatch)
  submit-json       POST /v1/jobs, a JSON `generate` body (no upload, no probe)
  get-job           GET /v1/jobs/{id} of jobs the submits created

Open loop (default): requests arrive at a fixed offered rate with Poisson (exponential) inter-arrival times and each
is sent at its scheduled time whatever the state of the earlier ones, spread over the users. Latency is measured
from the scheduled send time, not from when the client got round to sending, so queueing anywhere (server, client,
connection set-up) counts: no coordinated omission. A request not answered `--grace` s after the last arrival
counts as an infinite latency. Rates climb `--rates`; once a step is overloaded (p99 over 1 s, errors or timeouts)
the higher steps of that operation are skipped. Each operation's ladder starts after an unrecorded settling step at
the lowest rate. The summary gives, per operation, the highest offered rate at which p99 stayed under 50 ms with no
error, at that rate and at every lower one.

Worker modes (`--workers`): `off` leaves every job queued (max_running_jobs_per_user=0: dispatch takes its lock and
counts, but no job is handed to a worker and no worker process starts): the API's own cost. `on` runs 1 local
worker (the builtin engines) during the measurement; before each step and before the server stops, the bench
DRAINS: it waits until every job submitted so far is final, so no step pays for an earlier step's backlog and the
workers are never shut down with jobs pending. `--baseline DIR` runs everything twice, first serving the code of the
checkout DIR (PYTHONPATH=DIR for the server process only), then this checkout: before/after in one run.

CPU columns: milliseconds of CPU per sent request, from /proc, for the API process, Postgres, the workers and this
client process. Postgres = the postmaster's own utime+stime plus its cutime+cstime (the CPU of every backend it has
reaped: connections opened and closed by workers during the step are counted) plus utime+stime(+cutime+cstime) of
every live descendant; the difference between the start and the end of a step. The workers the same way: the API
process's cutime+cstime plus its live descendants.

Closed loop (`--closed-loop`, issue 3's first form): `--clients` concurrent loops each sending as fast as answers
come, `--repeat` rounds per level; `--profile DIR` samples the API process with py-spy (when installed).
Exits 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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

SERVE_SCRIPT = Path(__file__).with_name("serve.py")
# Inherited variables that would change what the server is (production services, another database, other limits).
_FOREIGN_ENV = ("DATABASE_", "SUPABASE_", "STRIPE_", "STUDIO_", "MODAL_")


def bench_settings(state_dir: Path, database_url: str, secret_key: str, *, workers: bool) -> Settings:
    return Settings(
        database_url=database_url,
        state_dir=state_dir,
        engines="builtin",
        local_workers=1,
        secret_key=secret_key,  # the same in every server of a run: it signs the users' tokens
        supabase_url=None,
        stripe_secret_key=None,
        stripe_webhook_secret=None,
        rate_limit_per_minute=UNLIMITED,
        # 0 slots: dispatch_job still takes its lock and counts, but every job stays queued and no worker runs.
        max_running_jobs_per_user=UNLIMITED if workers else 0,
    )


def server_environment(settings: Settings, code_dir: Path | None) -> dict[str, str]:
    """The settings as `studio serve` reads them (STUDIO_* and DATABASE_URL), nothing else of ours inherited."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_ENV)}
    assert settings.database_url is not None and settings.secret_key is not None
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "STUDIO_STATE_DIR": str(settings.state_dir),
            "STUDIO_ENGINES": settings.engines,
            "STUDIO_LOCAL_WORKERS": str(settings.local_workers),
            "STUDIO_SECRET_KEY": settings.secret_key,
            "STUDIO_RATE_LIMIT_PER_MINUTE": str(settings.rate_limit_per_minute),
            "STUDIO_MAX_RUNNING_JOBS_PER_USER": str(settings.max_running_jobs_per_user),
        }
    )
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir)
    return env


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, settings: Settings, code_dir: Path | None = None) -> Server:
        process = subprocess.Popen(
            [sys.executable, str(SERVE_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=server_environment(settings, code_dir),
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()  # the port, once bound (empty if the process died first)
        if not line.strip().isdigit():
            process.kill()
            process.wait(10)
            raise RuntimeError(f"the server process did not report its port (exit code {process.returncode})")
        server = cls(process, f"http://127.0.0.1:{int(line)}")
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
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited during start-up (exit code {self.process.returncode})")
                try:
                    if http.get("/v1/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.2)  # polling a process we do not control; no timing is measured here
        raise RuntimeError(f"/v1/health did not answer 200 within {SERVER_START_TIMEOUT_S:g} s")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # end of file: uvicorn shuts down, then local_state stops the workers
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


async def create_users(settings: Settings, count: int) -> list[str]:
    """`count` users with tokens and CREDITS_PER_USER credits each, through the same calls as `studio token`."""
    from api.security import ensure_user, mint_local_token
    from api.wiring import local_state
    from db import ledger

    tokens = []
    async with local_state(settings) as state:
        for index in range(count):
            email = f"bench{index}@example.com"
            user_id = await ensure_user(state.pool, settings, email)
            async with state.pool.connection() as conn:
                await ledger.adjust(conn, user_id, f"bench:{user_id}", CREDITS_PER_USER, note="bench.api")
            tokens.append(mint_local_token(settings, state.signing_key, user_id, email))
    return tokens


# ---- CPU accounting from /proc ----


def _proc_times(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) in seconds: own CPU, and the CPU of children it has reaped (waited for)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0  # exited between listing and reading: its CPU is in its parent's cutime from now on
    fields = stat.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


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


def _tree_cpu(pids: list[int]) -> float:
    """Own plus reaped-children CPU of each process. A child reaped by one of them is in its parent's cutime and no
    longer listed, a live one is listed and not yet in any cutime: each CPU second is counted once."""
    return sum(own + reaped for own, reaped in map(_proc_times, pids))


@dataclass
class CpuMeter:
    """CPU seconds used so far by each component (see the module docstring for the Postgres method).

    The root is read before its descendants: a backend that exits between the two reads is missed by this snapshot
    (and found in the root's cutime by the next), never counted twice."""

    api_pid: int
    postmaster_pid: int

    def snapshot(self) -> dict[str, float]:
        if not Path("/proc/self/stat").exists():
            return {}
        times = os.times()
        api_own, api_reaped = _proc_times(self.api_pid)
        postmaster_own, postmaster_reaped = _proc_times(self.postmaster_pid)
        return {
            "api": api_own,
            "workers": api_reaped + _tree_cpu(_descendants(self.api_pid)),
            "postgres": postmaster_own + postmaster_reaped + _tree_cpu(_descendants(self.postmaster_pid)),
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


async def closed_loop(
    args: argparse.Namespace, base_url: str, tokens: list[str], meter: CpuMeter, database_url: str
) -> int:
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
    mode = (
        "jobs dispatched to 1 local worker, DRAINED (every earlier job final) before each phase"
        if args.workers == "on"
        else "jobs stay queued (no worker)"
    )
    print(
        f"server {base_url}; {mode}; {args.repeat} round(s) per level, each at most {args.requests} requests "
        f"or {args.seconds:g} s; figures are medians over rounds; cpu = CPU ms per successful request"
    )
    failed = 0
    try:
        for name, title, op, expect, on_ok in phases:
            if args.only and name not in args.only:
                continue
            if args.workers == "on":
                await drain(database_url)  # no phase pays for the worker's backlog of the one before
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
        if args.workers == "on":
            await drain(database_url)  # the workers stop with the server: only once nothing is pending
    finally:
        await asyncio.gather(*(client.aclose() for client in http))
    return failed


# ---- open loop ----

P99_TARGET_MS = 50.0
OVERLOADED_P99_S = 1.0  # above this the higher rates of the operation are skipped: they would only queue longer
DRAIN_TIMEOUT_S = 600.0
OPEN_LOOP_OPS = ("submit-multipart", "submit-json", "get-job")


@dataclass
class Step:
    code: str  # "baseline" or "current"
    workers: str  # "on" or "off"
    op: str
    offered: float  # requests per second
    sent: int
    latencies: list[float]  # seconds from the scheduled send time to the answer, successful requests only
    errors: Counter[str]
    timeouts: int
    seconds: float  # from the first scheduled send to the last answer
    cpu: dict[str, float]
    load1: float

    def p(self, q: float) -> float:
        """Nearest-rank percentile in ms over every sent request; errors and timeouts count as infinitely slow."""
        failed = self.sent - len(self.latencies)
        values = sorted(self.latencies) + [math.inf] * failed
        return percentile(values, q) * 1000 if values else math.nan

    @property
    def clean(self) -> bool:
        return not self.errors and not self.timeouts


class Load:
    """The connections and users the open loop spreads its requests over (one AsyncClient, unbounded connections:
    an open loop never waits for a free connection before sending)."""

    def __init__(self, base_url: str, tokens: list[str], wav: bytes) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=REQUEST_TIMEOUT_S,
            # Idle connections expire well before uvicorn's 5 s keep-alive timeout: reusing one the server is closing
            # at that instant is a client-side ReadError, not an answer of the API.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0),
        )
        self.headers = [{"Authorization": f"Bearer {token}"} for token in tokens]
        self.wav = wav
        self.jobs: list[tuple[int, str]] = []  # (user index, job id) of every accepted submit

    async def send(self, op: str, number: int) -> tuple[httpx.Response, int]:
        """Request `number` of `op`, as user `number % users`; returns the response and the status that means success.
        Accepted submits are remembered for get-job."""
        user = number % len(self.headers)
        if op == "get-job":
            owner, job_id = self.jobs[number % len(self.jobs)]
            return await self.http.get(f"/v1/jobs/{job_id}", headers=self.headers[owner]), 200
        if op == "submit-multipart":
            files = {"file": ("tone.wav", self.wav, "audio/wav")}
            data = {"task": "enhance", "params": "{}"}
            response = await self.http.post("/v1/jobs", data=data, files=files, headers=self.headers[user])
        else:
            response = await self.http.post("/v1/jobs", json=GENERATE_BODY, headers=self.headers[user])
        if response.status_code == 202:
            self.jobs.append((user, response.json()["id"]))
        return response, 202

    async def warm_up(self, requests: int) -> None:
        """Connections, caches, the worker's first engine load, and jobs for get-job to read; not recorded."""
        for op in OPEN_LOOP_OPS:
            for number in range(requests):
                response, expect = await self.send(op, number)
                if response.status_code != expect:
                    raise RuntimeError(f"warm-up {op}: HTTP {response.status_code} {response.text[:300]}")


async def open_loop_step(
    load: Load, op: str, rate: float, seconds: float, grace: float, meter: CpuMeter, rng: np.random.Generator
) -> tuple[int, list[float], Counter[str], int, float, dict[str, float]]:
    """Send `op` at Poisson arrivals of mean `rate` per second for `seconds`; latency from each scheduled time."""
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 2) + 16)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < seconds]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    loop = asyncio.get_running_loop()

    async def one(number: int, scheduled: float) -> None:
        try:
            response, expect = await load.send(op, number)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
            return
        answered = loop.time()
        if response.status_code != expect:
            code = response.json().get("code", "") if response.content else ""
            errors[f"HTTP {response.status_code} {code}".strip()] += 1
            return
        latencies.append(answered - scheduled)

    before = meter.snapshot()
    start = loop.time() + 0.05
    tasks = []
    for number, offset in enumerate(offsets):
        scheduled = start + float(offset)
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # On schedule whatever the earlier requests are doing: a task per request, never awaited here.
        tasks.append(asyncio.create_task(one(number, scheduled)))
    done, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = loop.time() - start
    after = meter.snapshot()
    cpu = {name: after[name] - before[name] for name in after}
    return len(offsets), latencies, errors, len(pending), elapsed, cpu


async def unfinished_jobs(database_url: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM jobs WHERE status <> ALL(%s)", (["succeeded", "failed", "canceled"],)
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def drain(database_url: str, timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Wait until every job is final (the worker has caught up), so the next step starts with an idle worker."""
    deadline = time.monotonic() + timeout
    while (left := await unfinished_jobs(database_url)) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} job(s) still not final after {timeout:g} s of draining")
        await asyncio.sleep(0.25)  # polling the database for completion; nothing is timed here


async def open_loop(
    args: argparse.Namespace,
    code: str,
    workers: str,
    server: Server,
    tokens: list[str],
    meter: CpuMeter,
    database_url: str,
    wav: bytes,
) -> list[Step]:
    load = Load(server.base_url, tokens, wav)
    rng = np.random.default_rng(args.seed)
    steps: list[Step] = []
    try:
        await load.warm_up(max(3, len(tokens)))
        for op in OPEN_LOOP_OPS:
            if args.only and op not in args.only:
                continue
            # Unrecorded settling step at the lowest rate: the previous operation's last (often overloaded) step
            # leaves hundreds of idle connections and fresh tables behind, which would be charged to this one's first.
            if workers == "on":
                await drain(database_url)
            await open_loop_step(load, op, min(args.rates), min(2.0, args.seconds), args.grace, meter, rng)
            for rate in sorted(args.rates):
                if workers == "on":
                    await drain(database_url)
                sent, latencies, errors, timeouts, seconds, cpu = await open_loop_step(
                    load, op, rate, args.seconds, args.grace, meter, rng
                )
                step = Step(
                    code, workers, op, rate, sent, latencies, errors, timeouts, seconds, cpu, os.getloadavg()[0]
                )
                steps.append(step)
                print(f"  {code} workers {workers} {op} {rate:g}/s: p50 {step.p(50):.1f} ms, p99 {step.p(99):.1f} ms")
                if not step.clean or step.p(99) > OVERLOADED_P99_S * 1000:
                    break
        if workers == "on":
            await drain(database_url)  # the workers stop with the server: only once nothing is pending
    finally:
        await load.http.aclose()
    return steps


OPEN_HEADER = [
    "code",
    "workers",
    "op",
    "offered/s",
    "sent",
    "ok",
    "errors",
    "p50 ms",
    "p99 ms",
    *(f"cpu {n} ms/req" for n in CPU_COMPONENTS),
    "load1",
]


def open_loop_table(steps: list[Step]) -> list[list[str]]:
    rows = []
    for step in steps:
        failed = sum(step.errors.values()) + step.timeouts
        cpu = [
            f"{step.cpu[name] / step.sent * 1000:.2f}" if step.sent and name in step.cpu else "-"
            for name in CPU_COMPONENTS
        ]
        rows.append(
            [
                step.code,
                step.workers,
                step.op,
                f"{step.offered:g}",
                str(step.sent),
                str(len(step.latencies)),
                str(failed),
                f"{step.p(50):.1f}",
                f"{step.p(99):.1f}",
                *cpu,
                f"{step.load1:.1f}",
            ]
        )
    return rows


def max_rate_under_target(steps: list[Step]) -> dict[tuple[str, str, str], str]:
    """Per (code, workers, op): the highest offered rate at which it, and every lower rate tried, had p99 < 50 ms and
    no error."""
    best: dict[tuple[str, str, str], str] = {}
    for key in dict.fromkeys((s.code, s.workers, s.op) for s in steps):
        group = sorted((s for s in steps if (s.code, s.workers, s.op) == key), key=lambda s: s.offered)
        sustained = None
        for step in group:
            if not (step.clean and step.p(99) < P99_TARGET_MS):
                break
            sustained = step.offered
        if sustained is None:
            best[key] = f"< {group[0].offered:g}/s"
        elif sustained == group[-1].offered:
            best[key] = f">= {sustained:g}/s (highest tried)"
        else:
            best[key] = f"{sustained:g}/s"
    return best


def print_open_loop(args: argparse.Namespace, steps: list[Step]) -> None:
    print(
        f"\nopen loop: Poisson arrivals, {args.seconds:g} s per step, latency from the scheduled send time; "
        f"workers on = 1 local worker running jobs, DRAINED (every earlier job final) before each step; "
        f"workers off = jobs stay queued, no worker process; cpu per sent request; load1 = 1-min load average "
        f"at the step's end ({os.cpu_count()} cores, shared)"
    )
    rows = open_loop_table(steps)
    table = [OPEN_HEADER, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(OPEN_HEADER))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    print(f"\nhighest offered rate with p99 < {P99_TARGET_MS:g} ms and no error (at it and every lower rate):")
    for (code, workers, op), verdict in max_rate_under_target(steps).items():
        print(f"  {code:8}  workers {workers:3}  {op:16}  {verdict}")
    failures: Counter[str] = Counter()
    for step in steps:
        failures.update(step.errors)
        if step.timeouts:
            failures[f"no answer within {args.grace:g} s"] += step.timeouts
    for reason, count in failures.most_common():
        print(f"  error: {count} x {reason}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--closed-loop", action="store_true", help="issue 3's closed loop instead of the open loop")
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 20, 40, 80, 160], help="offered req/s")
    parser.add_argument("--grace", type=float, default=10.0, help="open loop: seconds to wait for the last answers")
    parser.add_argument("--seed", type=int, default=0, help="open loop: seed of the arrival times")
    parser.add_argument("--users", type=int, default=8, help="open loop: users the requests are spread over")
    parser.add_argument(
        "--workers",
        choices=["both", "on", "off"],
        default="both",
        help="on: 1 local worker runs the jobs (drained between steps); off: jobs stay queued, no worker",
    )
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. a worktree of main): measured first, same run"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="closed loop: concurrency levels")
    parser.add_argument("--requests", type=int, default=300, help="closed loop: requests per round (upper bound)")
    parser.add_argument("--seconds", type=float, help="seconds per step (open: 6) or time limit per round (closed: 30)")
    parser.add_argument("--repeat", type=int, default=3, help="closed loop: rounds per level; the table shows medians")
    parser.add_argument("--warmup", type=int, default=3, help="closed loop: warm-up requests per client per phase")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(OPEN_LOOP_OPS),
        help="run only these operations (get-job polls the jobs the submits created)",
    )
    parser.add_argument("--profile", type=Path, help="closed loop: py-spy the API process into this folder")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 30.0 if args.closed_loop else 6.0
    if min(args.clients) < 1 or args.requests < 1 or args.repeat < 1 or args.seconds <= 0 or args.warmup < 1:
        parser.error("--clients, --requests, --repeat and --warmup must be >= 1 and --seconds > 0")
    if min(args.rates) <= 0 or args.users < 1 or args.grace <= 0:
        parser.error("--rates and --grace must be > 0 and --users >= 1")
    if args.closed_loop and args.workers == "both":
        args.workers = "on"
    if args.baseline is not None and not (args.baseline / "api" / "main.py").is_file():
        parser.error(f"--baseline {args.baseline} is not a checkout of this project (no api/main.py)")
    if args.profile and PY_SPY is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy==0.4.1 into the venv)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="studio-bench-api-"))
    pg = None
    failed = 0
    steps: list[Step] = []
    try:
        pg = embedded.start(folder / "postgres")
        database_url = embedded.database_url(pg)
        migrate(database_url)
        postmaster = int((Path(pg.pgdata) / "postmaster.pid").read_text().split()[0])
        users = max(args.clients) if args.closed_loop else args.users
        secret_key = secrets.token_urlsafe(48)
        state_dir = folder / "state"
        tokens = asyncio.run(create_users(bench_settings(state_dir, database_url, secret_key, workers=True), users))
        codes: list[tuple[str, Path | None]] = [("current", None)]
        if args.baseline is not None:
            codes.insert(0, ("baseline", args.baseline.resolve()))
        modes = ["on", "off"] if args.workers == "both" else [args.workers]
        wav = make_wav()
        for workers in modes:
            for code, code_dir in codes:
                settings = bench_settings(state_dir, database_url, secret_key, workers=workers == "on")
                server = Server.start(settings, code_dir)
                try:
                    meter = CpuMeter(server.pid, postmaster)
                    if args.closed_loop:
                        print(f"\n{code} code:")
                        failed += asyncio.run(closed_loop(args, server.base_url, tokens, meter, database_url))
                    else:
                        found = asyncio.run(open_loop(args, code, workers, server, tokens, meter, database_url, wav))
                        steps += found
                        failed += sum(sum(s.errors.values()) + s.timeouts for s in found)
                finally:
                    server.stop()
    finally:
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    if steps:
        print_open_loop(args, steps)
    if failed:
        print(f"\nFAILED: {failed} request(s) errored or went unanswered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
