"""The `studio submit / jobs / credits` client: plain HTTP against a running API.

Inputs larger than a threshold go as a resumable upload (tus 1.0, `upload_resumable`) and the job then names it as
`input_upload`: a dropped connection costs a HEAD and the rest of the file, not a restart.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

FINAL_STATES = {"succeeded", "failed", "canceled"}
TUS_VERSION = "1.0.0"
LOCAL_CHUNK_BYTES = 8 * 1024 * 1024  # per PATCH to the API in local mode (production uses Storage's part size)
RETRY_DELAYS = (0.0, 1.0, 3.0, 10.0, 20.0)  # seconds before each resume after a dropped connection


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


Progress = Callable[[int, int], None]  # (bytes sent, total)


def upload_resumable(
    api: StudioClient,
    path: Path,
    *,
    progress: Progress | None = None,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> str:
    """Upload `path` with tus 1.0 and return the upload's id (a job's `input_upload`). POST /v1/uploads says where
    the bytes go: straight to Supabase Storage with a one-object token (production), or to the API (local mode)."""
    size = path.stat().st_size
    body = {"filename": path.name, "size": size, "content_type": _content_type(path)}
    created = api.request("POST", "/v1/uploads", json=body).json()
    authorization = created.get("tus")
    if authorization:
        # A client of its own: the API's bearer token must never travel to Storage, which needs only the token.
        with httpx.Client(timeout=api.http.timeout) as storage:
            headers = dict(authorization["headers"])
            url = _tus_create(storage, authorization["endpoint"], headers, authorization["metadata"], size)
            chunk_size = int(authorization["chunk_size"])
            _tus_send(storage, url, headers, path, size, chunk_size, progress, retry_delays)
    else:
        _tus_send(api.http, created["upload_url"], {}, path, size, LOCAL_CHUNK_BYTES, progress, retry_delays)
    return str(created["id"])


def _tus_create(http: httpx.Client, endpoint: str, headers: dict[str, str], metadata: dict[str, str], size: int) -> str:
    encoded = ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items())
    response = http.post(
        endpoint,
        headers={**headers, "Tus-Resumable": TUS_VERSION, "Upload-Length": str(size), "Upload-Metadata": encoded},
    )
    if response.status_code != 201 or "location" not in response.headers:
        raise ApiError(f"tus creation failed: {response.status_code} {response.text[:200]}")
    return str(httpx.URL(endpoint).join(response.headers["location"]))


def _tus_offset(http: httpx.Client, url: str, headers: dict[str, str]) -> int:
    response = http.head(url, headers={**headers, "Tus-Resumable": TUS_VERSION})
    if response.status_code != 200:
        raise ApiError(f"cannot resume the upload: HEAD answered {response.status_code}")
    return int(response.headers["upload-offset"])


def _tus_send(
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    path: Path,
    size: int,
    chunk_size: int,
    progress: Progress | None,
    retry_delays: Sequence[float],
) -> None:
    """PATCH the file from the server's offset, a chunk at a time; after a transport error (or a 409 saying the
    offset moved) ask the offset again with HEAD and go on from there, at most `len(retry_delays)` times in a row."""
    offset, failures = 0, 0
    with path.open("rb") as handle:
        while offset < size:
            try:
                handle.seek(offset)
                chunk = handle.read(min(chunk_size, size - offset))
                response = http.patch(
                    url,
                    content=chunk,
                    headers={
                        **headers,
                        "Tus-Resumable": TUS_VERSION,
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                if response.status_code in (409, 423) or response.status_code >= 500:
                    raise httpx.TransportError(f"PATCH answered {response.status_code}")
                if response.status_code != 204:
                    raise ApiError(f"upload refused: {response.status_code} {response.text[:200]}")
                offset, failures = int(response.headers["upload-offset"]), 0
            except httpx.TransportError:
                if failures >= len(retry_delays):
                    raise
                time.sleep(retry_delays[failures])
                failures += 1
                offset = _tus_offset(http, url, headers)
            if progress is not None:
                progress(offset, size)


def submit(
    api: StudioClient,
    task: str,
    file: Path | None,
    params: dict[str, Any],
    *,
    wait: bool,
    out_dir: Path | None,
    reference: str | None = None,
    resumable_over: int | None = None,
) -> int:
    """Submit a job; `reference` (master) is a local file, uploaded, or an http(s) URL, sent as `reference_url`.
    A `file` larger than `resumable_over` bytes goes first as a resumable upload, with a progress bar."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    fields = {"task": task, "params": json.dumps(params)}
    if file is not None and resumable_over is not None and file.stat().st_size > resumable_over:
        fields["input_upload"] = _upload_with_bar(api, file)
        file = None
    uploads = {"file": file} if file is not None else {}
    if reference is not None:
        if reference.startswith(("https://", "http://")):
            fields["reference_url"] = reference
        else:
            uploads["reference"] = Path(reference)
    if uploads or "reference_url" in fields or "input_upload" in fields:
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


def _upload_with_bar(api: StudioClient, path: Path) -> str:
    from tqdm import tqdm

    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"upload {path.name}") as bar:
        upload_id = upload_resumable(api, path, progress=lambda sent, _total: bar.update(sent - bar.n))
    print(f"upload {upload_id} complete")
    return upload_id


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
