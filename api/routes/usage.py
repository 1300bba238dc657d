"""/v1/usage: what the caller's ledger captured (credits, the jobs they paid for, those jobs' audio seconds) over a
period of UTC days, by day, task or API key; JSON, or CSV when the Accept header prefers `text/csv`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentUser, State
from api.errors import Problem
from api.routes.responses import AUTH_RESPONSES, problem_doc
from db import api_keys as db_api_keys
from db import ledger

router = APIRouter(tags=["usage"])

DEFAULT_DAYS = 30
MAX_DAYS = 366
CSV = "text/csv"
JSON = "application/json"
ACCOUNT_TOKEN_LABEL = "account token"  # usage through the account's own token, not an API key
GROUP_COLUMNS = {"day": "day", "task": "task", "api_key": "api_key_id"}


class UsageRow(BaseModel):
    group: str | None = Field(
        description="The UTC day (YYYY-MM-DD), the task, or the API key's id (null: the account's own token)."
    )
    label: str = Field(description="The day or task; for an API key, its name (`account token` for null).")
    credits: int = Field(description="Credits captured (jobs that succeeded).")
    jobs: int = Field(description="Jobs those credits paid for.")
    audio_seconds: float = Field(description="Input audio seconds of those jobs.")


class UsageTotals(BaseModel):
    credits: int
    jobs: int
    audio_seconds: float


class Usage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    object: Literal["usage"] = "usage"
    from_: date = Field(alias="from", description="The first UTC day counted.")
    to: date = Field(description="The last UTC day counted (inclusive).")
    group_by: Literal["day", "task", "api_key"]
    data: list[UsageRow] = Field(description="One row per group; by day, every day of the period (zeros included).")
    total: UsageTotals


_CSV_EXAMPLE = "day,credits,jobs,audio_seconds\r\n2026-01-01,12,3,181.2\r\n2026-01-02,0,0,0.0\r\n"


def _prefers_csv(accept: str | None) -> bool:
    """Whether the Accept header ranks text/csv above JSON (RFC 9110 section 12.5.1 weights; JSON wins ties and an
    absent header). 406 when it accepts neither."""
    if not accept:
        return False
    weights = {CSV: -1.0, JSON: -1.0}
    specificity = {CSV: -1, JSON: -1}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        for offered in (CSV, JSON):
            kind = offered.split("/")[0]
            rank = 2 if media == offered else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
            if rank > specificity[offered]:  # the most specific range that matches decides (RFC 9110 12.5.1)
                specificity[offered], weights[offered] = rank, quality
    if weights[CSV] <= 0 and weights[JSON] <= 0:
        raise Problem(406, "not_acceptable", "Not acceptable", f"This resource is {JSON} or {CSV}.")
    return weights[CSV] > weights[JSON]


def _period(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    end = end or (today if start is None else min(today, start + timedelta(days=DEFAULT_DAYS - 1)))
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise Problem(422, "invalid_period", "Invalid period", "`from` must not be after `to`.")
    if (end - start).days + 1 > MAX_DAYS:
        raise Problem(422, "invalid_period", "Invalid period", f"A period spans at most {MAX_DAYS} days.")
    return start, end


def _cell(value: str) -> str:
    # A spreadsheet runs a cell starting with one of these as a formula; key names are the user's own text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv(usage: Usage) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    with_label = usage.group_by == "api_key"
    writer.writerow(
        [GROUP_COLUMNS[usage.group_by], *(["api_key_name"] if with_label else []), "credits", "jobs", "audio_seconds"]
    )
    for row in usage.data:
        label = [_cell(row.label)] if with_label else []
        writer.writerow([row.group or "", *label, row.credits, row.jobs, row.audio_seconds])
    return out.getvalue()


@router.get(
    "/usage",
    response_model=Usage,
    summary="Usage from the ledger, by day, task or API key",
    responses={
        200: {
            "description": f"JSON by default; CSV when the Accept header prefers `{CSV}` (same rows, one per group).",
            "content": {CSV: {"schema": {"type": "string"}, "example": _CSV_EXAMPLE}},
        },
        **AUTH_RESPONSES,
        406: problem_doc(406, "not_acceptable", f"The Accept header allows neither {JSON} nor {CSV}"),
        422: problem_doc(422, "invalid_period", "`from` after `to`, a period over 366 days, or a bad parameter"),
    },
)
async def get_usage(
    user: CurrentUser,
    state: State,
    start: Annotated[
        date | None, Query(alias="from", description="First UTC day (YYYY-MM-DD); default: 30 days before `to`.")
    ] = None,
    end: Annotated[date | None, Query(alias="to", description="Last UTC day, inclusive; default: today.")] = None,
    group_by: Annotated[Literal["day", "task", "api_key"], Query()] = "day",
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Credits captured (succeeded jobs), the jobs they paid for and those jobs' input audio seconds, counted on the
    day each was charged. `Accept: text/csv` gives the same rows as CSV."""
    wants_csv = _prefers_csv(accept)  # before any work: a 406 costs nothing
    first, last = _period(start, end, state.clock().astimezone(UTC).date())
    since = datetime.combine(first, time(), UTC)
    until = datetime.combine(last + timedelta(days=1), time(), UTC)
    async with state.pool.connection() as conn:
        rows = await ledger.usage(conn, user.id, since, until, group_by)
        key_ids = [UUID(row.group) for row in rows if group_by == "api_key" and row.group is not None]
        labels = await db_api_keys.labels(conn, user.id, key_ids) if key_ids else {}
    if group_by == "day":
        by_day = {row.group: row for row in rows}
        days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
        rows = [by_day.get(day) or ledger.UsageRow(day, 0, 0, 0.0) for day in days]

    def label(group: str | None) -> str:
        if group_by != "api_key":
            return group or ""
        return labels[UUID(group)][0] if group is not None and UUID(group) in labels else ACCOUNT_TOKEN_LABEL

    usage = Usage(
        from_=first,
        to=last,
        group_by=group_by,
        data=[
            UsageRow(group=r.group, label=label(r.group), credits=r.credits, jobs=r.jobs, audio_seconds=r.audio_seconds)
            for r in rows
        ],
        total=UsageTotals(
            credits=sum(r.credits for r in rows),
            jobs=sum(r.jobs for r in rows),
            audio_seconds=round(sum(r.audio_seconds for r in rows), 3),
        ),
    )
    if wants_csv:
        filename = f"usage-{first}-{last}-{group_by}.csv"
        return Response(
            _csv(usage),
            media_type=f"{CSV}; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"', "Vary": "Accept"},
        )
    return Response(usage.model_dump_json(by_alias=True), media_type=JSON, headers={"Vary": "Accept"})
