"""The webhook outbox: a job change becomes a `webhook_deliveries` row in the job's own transaction.

Called from the API (submit, cancel, reaper) and from worker processes; `api.background.webhooks` delivers the rows.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.jobs import view
from db import batches as db_batches
from db.jobs import get_job, partial_outputs

DELIVERIES_CHANNEL = "webhook_deliveries"

# job.progress is throttled: at most one per job per interval, and only after a large enough step. job.output (partial
# results) too, by the interval alone: each carries every partial output so far, so a dropped one loses nothing.
PROGRESS_MIN_INTERVAL_SECONDS = 5.0
PROGRESS_MIN_STEP = 0.1
# progress is a float4 column: 0.3 - 0.2 comes out as 0.0999999, which must still count as a 10% step.
_PROGRESS_EPSILON = 1e-4

_ENQUEUE_SQL = """
WITH t AS (SELECT COALESCE(%(now)s::timestamptz, now()) AS now),
last AS (
  SELECT created_at, (payload->>'progress')::float8 AS progress FROM webhook_deliveries
  WHERE job_id = %(job_id)s AND event = %(event)s ORDER BY created_at DESC LIMIT 1
),
inserted AS (
  INSERT INTO webhook_deliveries (id, job_id, user_id, event, url, payload, created_at, next_attempt_at)
  SELECT %(id)s, %(job_id)s, %(user_id)s, %(event)s, %(url)s, %(payload)s, t.now, t.now FROM t
  WHERE NOT %(throttle)s OR (
    %(progress)s - COALESCE((SELECT progress FROM last), 0) >= %(step)s
    AND NOT EXISTS (SELECT 1 FROM last WHERE last.created_at > t.now - make_interval(secs => %(interval)s)))
  RETURNING id
)
SELECT id, pg_notify(%(channel)s, id) FROM inserted
"""


async def enqueue_job_event(
    conn: psycopg.AsyncConnection, job_id: UUID, event: str, *, now: datetime | None = None
) -> str | None:
    """Queue `event` for the job's webhook, if it has one that wants it; returns the delivery id (the
    `webhook-id`), or None when nothing was queued (no URL, filtered out, or a throttled job.progress).

    Call it in the same transaction as the job change when there is one: the delivery then exists iff the change
    committed, and the deliverers are woken by NOTIFY on commit. `now` overrides the database clock (tests)."""
    if event not in view.WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    job = await get_job(conn, job_id)
    if job is None or not job["webhook_url"]:
        return None
    if event not in (job["webhook_events"] or view.DEFAULT_WEBHOOK_EVENTS):
        return None
    payload = view.job_resource(job)
    if event == "job.output":
        payload["partial_outputs"] = [view.partial_output(row) for row in await partial_outputs(conn, job_id)]
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        _ENQUEUE_SQL,
        {
            "channel": DELIVERIES_CHANNEL,
            "now": now,
            "id": f"msg_{uuid4().hex}",
            "job_id": job_id,
            "user_id": job["user_id"],
            "event": event,
            "url": job["webhook_url"],
            "payload": Jsonb(payload),
            "throttle": event in ("job.progress", "job.output"),
            "progress": float(job["progress"]),
            # job.output's throttle is the interval alone: any progress difference passes this step.
            "step": PROGRESS_MIN_STEP - _PROGRESS_EPSILON if event == "job.progress" else -1.0,
            "interval": PROGRESS_MIN_INTERVAL_SECONDS,
        },
    )
    inserted = await cursor.fetchone()
    return inserted["id"] if inserted else None


async def enqueue_batch_completed(
    conn: psycopg.AsyncConnection, job_id: UUID, now: datetime | None = None
) -> str | None:
    """In the transaction that settles `job_id`: counts the item final in its batch and, when it was the last one,
    queues `batch.completed` for the batch's webhook. The batch row's lock makes exactly one settle see the last
    item, however many finish at once. The delivery row names the last job (deliveries belong to a job)."""
    batch = await db_batches.count_item_final(conn, job_id, now)
    if batch is None or not batch["webhook_url"]:
        return None
    payload = view.batch_resource(batch, await db_batches.status_counts(conn, batch["id"]))
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        _ENQUEUE_SQL,
        {
            "channel": DELIVERIES_CHANNEL,
            "now": now,
            "id": f"msg_{uuid4().hex}",
            "job_id": job_id,
            "user_id": batch["user_id"],
            "event": "batch.completed",
            "url": batch["webhook_url"],
            "payload": Jsonb(payload),
            "throttle": False,
            "progress": 0.0,
            "step": PROGRESS_MIN_STEP,
            "interval": PROGRESS_MIN_INTERVAL_SECONDS,
        },
    )
    inserted = await cursor.fetchone()
    return inserted["id"] if inserted else None
