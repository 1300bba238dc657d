"""Step 2 of 5: submit. Input -> price -> store -> ONE transaction: the job row and its credit hold; then dispatch.

before: `api.jobs.request` validated the body. after: `api.jobs.dispatch` starts it (or leaves it queued).

A submit either creates the job, its hold and its dispatch, or answers an error and leaves nothing behind
(SPEC section 4): the input is stored under the new job id before the transaction and deleted on any failure
before the commit; a refused dispatch fails the job and releases its hold (`api.jobs.settle.fail_dispatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from api.errors import Problem
from api.jobs import idempotency
from api.jobs.dispatch import DispatchError, dispatch_job
from api.jobs.inputs import FetchPolicy, ProbedInput, ReceivedInput, fetch_url, probe_input
from api.jobs.pricing import price
from api.jobs.request import JobRequest, check_input_fits
from api.jobs.view import job_resource
from api.state import AppState
from db import jobs as db_jobs
from db import ledger
from inference.registry import TASKS

HOLD_MARGIN = timedelta(hours=1)  # holds outlive the job deadline so the reaper, not the hold sweeper, settles them


async def obtain_input(state: AppState, job: JobRequest, workdir: Path) -> tuple[ReceivedInput, ProbedInput]:
    """The main input, fetched if it is a URL, then probed within the deployment's limits."""
    return await _obtain(state, job.upload, job.input_url, workdir)


async def obtain_extra_inputs(
    state: AppState, job: JobRequest, workdir: Path
) -> dict[str, tuple[ReceivedInput, ProbedInput]]:
    """Second inputs (e.g. `reference`), fetched through the same guard and probed with the same caps as the main
    input. They are not priced: only the main input's duration is."""
    names = sorted({*job.extra_uploads, *job.extra_urls})
    return {
        name: await _obtain(state, job.extra_uploads.get(name), job.extra_urls.get(name), workdir) for name in names
    }


async def _obtain(
    state: AppState, upload: ReceivedInput | None, url: str | None, workdir: Path
) -> tuple[ReceivedInput, ProbedInput]:
    settings = state.settings
    received = upload
    if received is None:
        assert url is not None
        insecure = settings.input_url_allow_insecure
        policy = FetchPolicy(allow_http=insecure, allow_private=insecure)
        received = await fetch_url(
            url,
            workdir,
            max_bytes=settings.max_upload_bytes,
            timeout=settings.input_fetch_timeout_seconds,
            policy=policy,
        )
    probed = await probe_input(
        received.path,
        settings.max_duration_seconds,
        max_channels=settings.max_audio_channels,
        max_sample_rate=settings.max_sample_rate,
    )
    return received, probed


def _input_meta(received: ReceivedInput, probed: ProbedInput, input_url: str | None) -> dict[str, Any]:
    info = probed.info
    meta: dict[str, Any] = {
        "source": "url" if input_url else "upload",
        "filename": received.filename,
        "bytes": received.bytes,
        "sha256": received.sha256,
        "content_type": probed.content_type,
        "duration_s": round(info.duration_s, 3),
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "codec": info.codec,
        "container": info.container,
    }
    if input_url:
        meta["url"] = input_url
    return meta


def fingerprint(job: JobRequest) -> str:
    request: dict[str, Any] = {
        "task": job.task,
        "params": job.params.model_dump(mode="json"),
        "input_sha256": job.upload.sha256 if job.upload else None,
        "input_url": job.input_url,
        "webhook_url": job.webhook_url,
        "webhook_events": job.webhook_events,
    }
    extra = {name: {"sha256": upload.sha256} for name, upload in job.extra_uploads.items()}
    extra |= {name: {"url": url} for name, url in job.extra_urls.items()}
    if extra:  # only then: requests without second inputs keep the fingerprints stored before they existed
        request["extra_inputs"] = extra
    return idempotency.request_hash(request)


async def create_job(
    state: AppState, user_id: UUID, job: JobRequest, workdir: Path, *, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Probe, price, store, hold, dispatch. Returns the job resource; leaves nothing held or stored on error.

    With `idempotency_key` (claimed by the caller), the key is recorded as done, with the new job to replay, in the
    transaction that creates the job and its hold: no failure after that commit can free the key and let a retry
    create (and charge) a second job. Only a refused dispatch, which released the hold, frees it again.
    """
    settings = state.settings
    spec = TASKS[job.task]
    job_id = uuid4()
    input_ref: str | None = None
    input_meta: dict[str, Any] = {}
    extra_refs: dict[str, str] = {}
    seconds: float | None = None
    if spec.input_kind == "audio":
        # Every input is received and probed before anything is stored: a bad reference stores nothing.
        received, probed = await obtain_input(state, job, workdir)
        extras = await obtain_extra_inputs(state, job, workdir)
        seconds = probed.info.duration_s
        check_input_fits(job.task, job.params, seconds)
        input_meta = _input_meta(received, probed, job.input_url)
        if extras:
            input_meta["extra_inputs"] = {
                name: _input_meta(extra, extra_probed, job.extra_urls.get(name))
                for name, (extra, extra_probed) in extras.items()
            }
        cost = price(job.task, job.params, seconds)  # the main input's duration only
        # Upload first under the fresh job id: if the transaction then fails, the objects are deleted and no job
        # row ever pointed at them; if the upload fails, nothing was written to the database at all.
        input_ref = f"{user_id}/{job_id}/input{probed.extension}"
        await state.storage.put_file(settings.inputs_bucket, input_ref, received.path, probed.content_type)
        try:
            for name, (extra, extra_probed) in extras.items():
                extra_refs[name] = f"{user_id}/{job_id}/{name}{extra_probed.extension}"
                await state.storage.put_file(
                    settings.inputs_bucket, extra_refs[name], extra.path, extra_probed.content_type
                )
        except BaseException:
            await state.storage.delete(settings.inputs_bucket, db_jobs.stored_inputs(input_ref, extra_refs))
            raise
    else:
        cost = price(job.task, job.params, None)
    deadline_at: datetime = state.clock() + timedelta(seconds=settings.job_deadline_seconds)
    try:
        async with state.pool.connection() as conn, conn.transaction():
            await db_jobs.insert_job(
                conn,
                job_id=job_id,
                user_id=user_id,
                task=job.task,
                params=job.params.model_dump(mode="json"),
                model_key=spec.model_key(job.params),
                cost=cost,
                input_ref=input_ref,
                input_meta=input_meta,
                extra_inputs=extra_refs,
                webhook_url=job.webhook_url,
                webhook_events=job.webhook_events,
                deadline_at=deadline_at,
            )
            await ledger.hold(conn, user_id, job_id, cost, deadline_at + HOLD_MARGIN)
            if idempotency_key is not None:
                created = await db_jobs.get_job(conn, job_id)
                assert created is not None  # inserted above, in this transaction
                await idempotency.complete(conn, user_id, idempotency_key, 202, job_resource(created))
    except BaseException as exc:
        if input_ref is not None:
            await state.storage.delete(settings.inputs_bucket, db_jobs.stored_inputs(input_ref, extra_refs))
        if isinstance(exc, ledger.InsufficientCredits):
            raise Problem(
                402,
                "insufficient_credits",
                "Not enough credits",
                f"This job costs {exc.required} credits and {exc.available} are available.",
                required=exc.required,
                available=exc.available,
            ) from exc
        raise
    try:
        await dispatch_job(state, job_id)
    except DispatchError as exc:
        # dispatch_job has failed the job and released its hold; the input is no longer needed, and a retry with
        # the same key may try again (nothing was charged).
        if idempotency_key is not None:
            async with state.pool.connection() as conn:
                await idempotency.forget(conn, user_id, idempotency_key)
        if input_ref is not None:
            await state.storage.delete(settings.inputs_bucket, db_jobs.stored_inputs(input_ref, extra_refs))
            async with state.pool.connection() as conn:
                await db_jobs.clear_input_ref(conn, job_id, input_ref)
        raise Problem(
            503,
            "dispatch_failed",
            "The job could not be started",
            "No worker could take the job; nothing was charged. Retry shortly.",
            headers={"Retry-After": "5"},
            job_id=str(job_id),
        ) from exc
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, job_id)
    assert row is not None
    return job_resource(row)


@dataclass(frozen=True)
class Submitted:
    body: dict[str, Any]  # the job resource as created (or as first created, for a replay)
    status: int
    replayed: bool


async def submit_once(state: AppState, user_id: UUID, job: JobRequest, key: str | None, workdir: Path) -> Submitted:
    """`create_job` behind an optional `Idempotency-Key` (checked by `idempotency.check_key`): the same key and
    request replay the first job; a failed attempt frees the key. Every route that submits comes through here.

    `create_job` records the key as done inside the transaction that creates the job and its hold, so a failure
    after that commit (a database error in dispatch, cancellation at shutdown) cannot free it: `abandon` deletes
    only an in-flight claim, and a retry replays the job instead of charging twice."""
    settings = state.settings
    if key is None:
        return Submitted(await create_job(state, user_id, job, workdir), 202, replayed=False)
    async with state.pool.connection() as conn:
        replay = await idempotency.claim(
            conn,
            user_id,
            key,
            fingerprint(job),
            settings.idempotency_ttl_seconds,
            in_flight_lease_seconds=settings.idempotency_in_flight_lease_seconds,
        )
    if replay is not None:
        return Submitted(replay.body, replay.status, replayed=True)
    try:
        body = await create_job(state, user_id, job, workdir, idempotency_key=key)
    except BaseException:
        async with state.pool.connection() as conn:
            await idempotency.abandon(conn, user_id, key)
        raise
    async with state.pool.connection() as conn:
        await idempotency.complete(conn, user_id, key, 202, body)  # replay this answer, not the in-transaction snapshot
    return Submitted(body, 202, replayed=False)
