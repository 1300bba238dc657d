"""The `studio submit / jobs / credits` client: plain HTTP against a running API."""

from __future__ import annotations

import json
import mimetypes
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

FINAL_STATES = {"succeeded", "failed", "canceled"}


class ApiError(Exception):
    """A problem+json answer, rendered as one line."""


class StudioClient:
    def __init__(self, base_url: str, token: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, read=120.0),
            transport=transport,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
                message = f"{problem.get('status')} {problem.get('code')}: {problem.get('detail')}"
            except ValueError:
                message = f"{response.status_code} {response.text[:200]}"
            raise ApiError(message)
        return response

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-sent events of a job until the stream closes: (event name, data)."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30.0, read=None)) as stream:
            if stream.status_code >= 400:
                stream.read()
                raise ApiError(f"{stream.status_code} {stream.text[:200]}")
            event, data = "message", []
            for line in stream.iter_lines():
                if line.startswith(":"):
                    continue  # keep-alive
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())


def submit(
    api: StudioClient,
    task: str,
    file: Path | None,
    params: dict[str, Any],
    *,
    wait: bool,
    out_dir: Path | None,
    reference: str | None = None,
) -> int:
    """Submit a job; `reference` (master) is a local file, uploaded, or an http(s) URL, sent as `reference_url`."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    fields = {"task": task, "params": json.dumps(params)}
    uploads = {"file": file} if file is not None else {}
    if reference is not None:
        if reference.startswith(("https://", "http://")):
            fields["reference_url"] = reference
        else:
            uploads["reference"] = Path(reference)
    if uploads or "reference_url" in fields:
        with ExitStack() as stack:
            files = {
                name: (path.name, stack.enter_context(path.open("rb")), _content_type(path))
                for name, path in uploads.items()
            }
            response = api.request("POST", "/v1/jobs", headers=headers, data=fields, files=files or None)
    else:
        response = api.request("POST", "/v1/jobs", headers=headers, json={"task": task, "params": params})
    job = response.json()
    print(f"job {job['id']} {job['status']} ({job['cost']} credits)")
    if not (wait or out_dir):
        return 0
    job = follow(api, job["id"])
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(f"job {job['status']}: {error.get('code')}: {error.get('message')}")
        return 1
    if out_dir:
        download_outputs(api, job, out_dir)
    return 0


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def follow(api: StudioClient, job_id: str) -> dict[str, Any]:
    """Show a progress bar fed by the events stream, then return the job as GET returns it."""
    from tqdm import tqdm

    with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        for _event, data in api.events(job_id):
            progress = data.get("progress")
            if progress is not None:
                bar.update(round(progress * 100) - bar.n)
            bar.set_postfix_str(data.get("stage") or data.get("status") or "")
            if data.get("status") in FINAL_STATES:
                break
    return api.request("GET", f"/v1/jobs/{job_id}").json()


def download_outputs(api: StudioClient, job: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for output in job["outputs"]:
        target = out_dir / Path(output["name"]).name
        with api.http.stream("GET", output["url"]) as stream:
            stream.raise_for_status()
            with target.open("wb") as handle:
                for chunk in stream.iter_bytes():
                    handle.write(chunk)
        print(f"saved {target}")


def list_jobs(api: StudioClient, *, status: str | None, task: str | None, limit: int) -> int:
    query = {key: value for key, value in {"status": status, "task": task, "limit": limit}.items() if value}
    for job in api.request("GET", "/v1/jobs", params=query).json()["data"]:
        created = job["timings"]["created_at"][:19]
        print(f"{job['id']}  {created}  {job['task']:10} {job['status']:9} {job['cost']:>6} credits")
    return 0


def show_credits(api: StudioClient, *, ledger_entries: bool) -> int:
    balance = api.request("GET", "/v1/credits").json()
    print(f"available {balance['available']}  held {balance['held']}")
    if ledger_entries:
        for entry in api.request("GET", "/v1/credits/ledger").json()["entries"]:
            print(
                f"{entry['created_at'][:19]}  {entry['kind']:10} {entry['available_delta']:>+7} available"
                f" {entry['held_delta']:>+7} held  {entry.get('job_id') or entry.get('reference') or ''}"
            )
    return 0
