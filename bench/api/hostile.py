"""API memory under hostile bodies (issue 10, items 4-5): the API process's RSS before and after each attack.

    python -m bench.api.hostile [--body-mb 1536] [--fields 16000] [--field-bytes 65536] [--repeat 3]

One command, no setup: an embedded Postgres in a temp folder, and the app served by uvicorn in its own process,
exactly as `bench.api.run` serves it (builtin engines, one local worker); a fresh server for every run, so one
run's garbage does not flatter or spoil the next. Attacks, each from a raw socket sending a chunked body (no
Content-Length) as fast as it can until the server answers:
  unauth-body     POST /v1/api-keys without Authorization, `--body-mb` MiB of JSON-ish bytes
  authed-body     the same with a valid token (the small body cap applies)
  many-fields     POST /v1/jobs with a token, `--fields` multipart text fields of `--field-bytes` bytes each,
                  every one with a new name
Printed per attack, medians over `--repeat` runs: the answer, MiB the client got to send before the answer,
the server's RSS before and after (MiB, /proc VmRSS of the API process, worker pool excluded) and its peak
(VmHWM) growth. To see the figures without the request guard, run this file with an older checkout first on
PYTHONPATH (`PYTHONPATH=/path/to/old python /path/to/bench/api/hostile.py --body-mb 256`).
"""

from __future__ import annotations

import argparse
import asyncio
import select
import shutil
import socket
import statistics
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.api.run import Server, bench_settings, create_users
from db import embedded
from db.migrate import migrate

MIB = 1024 * 1024
SEND_CHUNK = 1 * MIB


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass
class Outcome:
    status: int
    sent_mib: float
    rss_before_mib: float
    rss_after_mib: float
    peak_growth_mib: float


def attack(port: int, head: bytes, pieces: Iterator[bytes]) -> tuple[int, int]:
    """Send the head, then chunks until they run out or the server answers; (status, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(head)
        try:
            for piece in pieces:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed
        answer = b""
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            if not part:
                break
            answer += part
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, sent


def head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_pieces(total_mib: int) -> Iterator[bytes]:
    piece = b'{"name": "' + b"x" * (SEND_CHUNK - 10)
    for _ in range(total_mib):
        yield piece


def field_pieces(boundary: str, fields: int, field_bytes: int) -> Iterator[bytes]:
    value = b"v" * field_bytes
    for index in range(fields):
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="field{index}"\r\n\r\n'.encode() + value + b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def run_once(settings: object, make_attack: Callable[[int], tuple[int, int]]) -> Outcome:
    server = Server.start(settings)  # type: ignore[arg-type]
    try:
        pid = server.process.pid
        assert pid is not None
        port = int(server.base_url.rsplit(":", 1)[1])
        before, peak_before = _status_kib(pid, "VmRSS"), _status_kib(pid, "VmHWM")
        status, sent = make_attack(port)
        after, peak_after = _status_kib(pid, "VmRSS"), _status_kib(pid, "VmHWM")
    finally:
        server.stop()
    return Outcome(status, sent / MIB, before / 1024, after / 1024, (peak_after - peak_before) / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-mb", type=int, default=1536, help="MiB in the hostile bodies")
    parser.add_argument("--fields", type=int, default=16_000)
    parser.add_argument("--field-bytes", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="studio-bench-hostile-"))
    pg = None
    try:
        pg = embedded.start(folder / "postgres")
        database_url = embedded.database_url(pg)
        migrate(database_url)
        settings = bench_settings(folder / "state", database_url, defer_dispatch=True)
        token = asyncio.run(create_users(settings, 1))[0]
        auth = {"Authorization": f"Bearer {token}"}
        boundary = "benchboundary"
        attacks: dict[str, Callable[[int], tuple[int, int]]] = {
            "unauth-body": lambda port: attack(
                port, head("/v1/api-keys", {"Content-Type": "application/json"}), body_pieces(args.body_mb)
            ),
            "authed-body": lambda port: attack(
                port, head("/v1/api-keys", {**auth, "Content-Type": "application/json"}), body_pieces(args.body_mb)
            ),
            "many-fields": lambda port: attack(
                port,
                head("/v1/jobs", {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}),
                field_pieces(boundary, args.fields, args.field_bytes),
            ),
        }
        print(
            f"{'attack':<12} {'answer':>6} {'sent MiB':>9} {'RSS before':>11} {'RSS after':>10} {'peak growth':>12}"
            f"   (MiB, median of {args.repeat})"
        )
        for name, make_attack in attacks.items():
            runs = [run_once(settings, make_attack) for _ in range(args.repeat)]
            statuses = sorted({run.status for run in runs})
            print(
                f"{name:<12} {'/'.join(map(str, statuses)):>6}"
                f" {statistics.median(r.sent_mib for r in runs):>9.1f}"
                f" {statistics.median(r.rss_before_mib for r in runs):>11.1f}"
                f" {statistics.median(r.rss_after_mib for r in runs):>10.1f}"
                f" {statistics.median(r.peak_growth_mib for r in runs):>12.1f}",
                flush=True,
            )
    finally:
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
