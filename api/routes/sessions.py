"""/v1/sessions: a user's multi-track sessions (the studio's timeline). A track points at a job output (job id +
output name) with its place and settings on the timeline; deleting a track or a session never deletes the output.
An output past retention shows as `status: expired` (no URL), not as an error."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.deps import CurrentUser, State
from api.errors import Problem
from api.jobs import idempotency
from api.jobs.inputs import lazy_workdir, probe_input
from api.jobs.request import JobCreate, validate_current
from api.jobs.submit import submit_once
from api.jobs.view import JobOut
from api.routes.responses import AUTH_RESPONSES, SPEND_RESPONSES, problem_doc
from api.state import AppState
from db import jobs as db_jobs
from db import sessions as db_sessions
from db.jobs import JobStatus
from inference.audio import CONTENT_TYPES
from inference.params import AudioFormat

# What engines write as audio (wav, flac, mp3); notes.mid is `audio/midi` but not something a track can play.
PLAYABLE_CONTENT_TYPES = frozenset(CONTENT_TYPES.values())

router = APIRouter(tags=["sessions"])

MAX_SESSIONS_PER_USER = 100
MAX_TRACKS_PER_SESSION = 64
MAX_OFFSET_MS = 86_400_000  # one day; the database's CHECK says the same
Name = Annotated[str, Field(min_length=1, max_length=100, description="A label (1-100 printable characters).")]
OffsetMs = Annotated[int, Field(ge=0, le=MAX_OFFSET_MS, description="Where the track starts on the timeline, ms.")]
GainDb = Annotated[float, Field(ge=-60.0, le=12.0, description="Track gain, dB.")]
Pan = Annotated[
    float, Field(ge=-1.0, le=1.0, description="-1 left .. 1 right, equal-power (Web Audio StereoPannerNode).")
]
TrimInMs = Annotated[int, Field(ge=0, le=MAX_OFFSET_MS, description="Skip this much of the output's start, ms.")]
TrimOutMs = Annotated[
    int | None, Field(gt=0, le=MAX_OFFSET_MS, description="Stop at this point of the output, ms; null: its end.")
]


def _printable(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isprintable():
        raise ValueError("must be non-empty printable text")
    return value


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name

    _name = field_validator("name")(_printable)


class SessionRename(SessionCreate):
    pass


class _TrackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset_ms: OffsetMs = 0
    gain_db: GainDb = 0.0
    pan: Pan = 0.0
    mute: bool = False
    solo: bool = False
    trim_in_ms: TrimInMs = 0
    trim_out_ms: TrimOutMs = None

    @model_validator(mode="after")
    def _trim_order(self) -> _TrackSettings:
        if self.trim_out_ms is not None and self.trim_out_ms <= self.trim_in_ms:
            raise ValueError("trim_out_ms must be after trim_in_ms")
        return self


class TrackCreate(_TrackSettings):
    """Add one output of a finished job as a track, or every audio output of it (`output` null: all stems of a
    separation, each variant of a generation)."""

    job_id: UUID
    output: str | None = Field(default=None, max_length=255, description="The output's name; null: every audio one.")
    name: Name | None = Field(default=None, description="Default: the output's name (with the task, for several).")
    parent_track_id: UUID | None = Field(
        default=None, description="The track this result was made from (send-to-task); it is listed under it."
    )

    _name = field_validator("name")(_printable)


class TrackUpdate(BaseModel):
    """Only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    position: int | None = Field(default=None, ge=0, le=10_000, description="Display order.")
    offset_ms: OffsetMs | None = None
    gain_db: GainDb | None = None
    pan: Pan | None = None
    mute: bool | None = None
    solo: bool | None = None
    trim_in_ms: TrimInMs | None = None
    trim_out_ms: TrimOutMs = None

    _name = field_validator("name")(_printable)


class Track(BaseModel):
    id: UUID
    name: str
    job_id: UUID
    output: str = Field(description="The job output the track plays.")
    parent_track_id: UUID | None
    position: int
    duration_ms: int = Field(description="The output's full length, ms (probed when the track was added).")
    offset_ms: int
    gain_db: float
    pan: float
    mute: bool
    solo: bool
    trim_in_ms: int
    trim_out_ms: int | None
    status: Literal["ready", "expired"] = Field(description="expired: the output is past retention (no URL).")
    url: str | None = Field(description="A signed download URL of the output while it is ready.")
    expires_at: datetime | None = Field(description="When `url` stops working.")


class SessionInfo(BaseModel):
    id: UUID
    name: str
    created_at: datetime
    updated_at: datetime
    track_count: int


class Session(SessionInfo):
    tracks: list[Track]


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class TrackList(BaseModel):
    tracks: list[Track]


_NOT_FOUND = {404: problem_doc(404, "not_found", "No such session or track")}
_INVALID = {422: problem_doc(422, "invalid_request", "Invalid name, position or track settings")}
_LIMIT = {409: problem_doc(409, "too_many_sessions", "A cap on sessions (100) or tracks per session (64) is reached")}
_ADD_ERRORS = {
    409: problem_doc(409, "too_many_tracks", "The session holds 64 tracks"),
    422: problem_doc(422, "output_unavailable", "The job is not yours, not finished, or its output is gone"),
}


def _not_found() -> Problem:
    return Problem(404, "not_found", "No such session")


def _output_expired(job: dict[str, Any] | None, output_name: str, now: datetime) -> str | None:
    """The output's storage key while it can be played, else None (deleted, past retention, or the job is gone)."""
    if job is None or job["outputs_deleted_at"] is not None:
        return None
    if job["outputs_expire_at"] is not None and job["outputs_expire_at"] <= now:
        return None
    refs = {out["name"]: out["ref"] for out in job["outputs"] or []}
    return refs.get(output_name)


async def _track_views(state: AppState, rows: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> list[Track]:
    seconds = state.settings.signed_url_seconds
    now = state.clock()
    expires_at = now + timedelta(seconds=seconds)
    views = []
    for track, job in rows:
        ref = _output_expired(job, track["output_name"], now)
        url = None
        if ref is not None:
            url = await state.storage.signed_url(state.settings.outputs_bucket, ref, seconds, track["output_name"])
        fields = {name: value for name, value in track.items() if name not in ("output_name", "session_id")}
        views.append(
            Track(
                **fields,
                output=track["output_name"],
                status="ready" if url else "expired",
                url=url,
                expires_at=expires_at if url else None,
            )
        )
    return views


async def _session_view(state: AppState, session_id: UUID, user_id: UUID) -> Session:
    async with state.pool.connection() as conn:
        session = await db_sessions.get(conn, session_id, user_id)
        if session is None:
            raise _not_found()
        rows = await db_sessions.track_rows(conn, session_id)
    return Session(**session, tracks=await _track_views(state, rows))


@router.post("/sessions", status_code=201, response_model=Session, responses={**AUTH_RESPONSES, **_INVALID, **_LIMIT})
async def create_session(body: SessionCreate, user: CurrentUser, state: State) -> Session:
    """Create an empty session (at most 100 per user: 409 `too_many_sessions`)."""
    async with state.pool.connection() as conn, conn.transaction():
        if await db_sessions.lock_user_sessions(conn, user.id) >= MAX_SESSIONS_PER_USER:
            raise Problem(
                409,
                "too_many_sessions",
                "Too many sessions",
                f"An account holds at most {MAX_SESSIONS_PER_USER} sessions; delete one first.",
                limit=MAX_SESSIONS_PER_USER,
            )
        session = await db_sessions.create(conn, user.id, body.name)
    return Session(**session, tracks=[])


@router.get("/sessions", response_model=SessionList, responses=AUTH_RESPONSES)
async def list_sessions(user: CurrentUser, state: State) -> SessionList:
    """Your sessions, most recently changed first."""
    async with state.pool.connection() as conn:
        sessions = await db_sessions.list_for_user(conn, user.id)
    return SessionList(sessions=[SessionInfo(**session) for session in sessions])


@router.get("/sessions/{session_id}", response_model=Session, responses={**AUTH_RESPONSES, **_NOT_FOUND})
async def get_session(session_id: UUID, user: CurrentUser, state: State) -> Session:
    """The session with its tracks in order; each ready track carries a fresh signed URL."""
    return await _session_view(state, session_id, user.id)


@router.patch("/sessions/{session_id}", response_model=Session, responses={**AUTH_RESPONSES, **_NOT_FOUND, **_INVALID})
async def rename_session(session_id: UUID, body: SessionRename, user: CurrentUser, state: State) -> Session:
    """Rename a session."""
    async with state.pool.connection() as conn:
        if not await db_sessions.rename(conn, session_id, user.id, body.name):
            raise _not_found()
    return await _session_view(state, session_id, user.id)


@router.delete(
    "/sessions/{session_id}", status_code=204, response_class=Response, responses={**AUTH_RESPONSES, **_NOT_FOUND}
)
async def delete_session(session_id: UUID, user: CurrentUser, state: State) -> Response:
    """Delete a session and its tracks. The job outputs the tracks pointed at are not touched."""
    async with state.pool.connection() as conn:
        if not await db_sessions.delete(conn, session_id, user.id):
            raise _not_found()
    return Response(status_code=204)


def _unavailable(detail: str) -> Problem:
    return Problem(422, "output_unavailable", "That output cannot be added", detail)


async def _probe_outputs(state: AppState, user_id: UUID, body: TrackCreate) -> list[tuple[str, int]]:
    """(output name, duration ms) of each output the request adds, probed from storage (so a session knows the
    lengths it arranges, and a mixdown is priced on them)."""
    async with state.pool.connection() as conn:
        job = await db_jobs.get_job(conn, body.job_id)
    if job is None or job["user_id"] != user_id:
        raise _unavailable("No such job.")
    if job["status"] != JobStatus.SUCCEEDED:
        raise _unavailable(f"The job is {job['status']}; only a succeeded job's outputs can be added.")
    if job["outputs_deleted_at"] is not None:
        raise _unavailable("The job's outputs are past retention and were deleted.")
    outputs = job["outputs"] or []
    if body.output is not None:
        outputs = [out for out in outputs if out["name"] == body.output]
        if not outputs:
            raise _unavailable(f"The job has no output named {body.output!r}.")
    audio = [out for out in outputs if out.get("content_type") in PLAYABLE_CONTENT_TYPES]
    if not audio:
        raise _unavailable("A track plays audio: that output is not audio." if body.output else "No audio outputs.")
    workdir = lazy_workdir("studio-track-")
    try:
        found = []
        for index, out in enumerate(audio):
            dest = workdir / f"{index}{PurePosixPath(out['ref']).suffix}"
            path = await state.storage.get_file(state.settings.outputs_bucket, out["ref"], dest)
            # Outputs may run past the input cap (fx adds up to 30 s of tail): twice the cap bounds the read.
            probed = await probe_input(
                path,
                2 * state.settings.max_duration_seconds,
                max_channels=state.settings.max_audio_channels,
                max_sample_rate=state.settings.max_sample_rate,
            )
            found.append((out["name"], max(1, round(probed.info.duration_s * 1000))))
        return found
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@router.post(
    "/sessions/{session_id}/tracks",
    status_code=201,
    response_model=TrackList,
    responses={**AUTH_RESPONSES, **_NOT_FOUND, **_ADD_ERRORS},
)
async def add_tracks(session_id: UUID, body: TrackCreate, user: CurrentUser, state: State) -> TrackList:
    """Add a finished job's output (or all its audio outputs) as tracks at the end of the session."""
    async with state.pool.connection() as conn:
        if await db_sessions.get(conn, session_id, user.id) is None:
            raise _not_found()
    outputs = await _probe_outputs(state, user.id, body)
    settings = body.model_dump(include=set(_TrackSettings.model_fields))
    for _, duration_ms in outputs:
        if settings["trim_in_ms"] >= duration_ms:
            raise Problem(422, "invalid_request", "Trimmed to nothing", "`trim_in_ms` is past the output's end.")
    added: list[UUID] = []
    async with state.pool.connection() as conn, conn.transaction():
        session = await db_sessions.get(conn, session_id, user.id, lock=True)
        if session is None:
            raise _not_found()
        if session["track_count"] + len(outputs) > MAX_TRACKS_PER_SESSION:
            raise Problem(
                409,
                "too_many_tracks",
                "Too many tracks",
                f"A session holds at most {MAX_TRACKS_PER_SESSION} tracks; it has {session['track_count']} and "
                f"this adds {len(outputs)}.",
                limit=MAX_TRACKS_PER_SESSION,
            )
        if body.parent_track_id is not None and not await db_sessions.track_rows(
            conn, session_id, body.parent_track_id
        ):
            raise Problem(422, "invalid_request", "No such parent track", "`parent_track_id` is not in this session.")
        for output_name, duration_ms in outputs:
            name = body.name or output_name
            if body.name and len(outputs) > 1:
                name = f"{body.name} {PurePosixPath(output_name).stem}"[:100]
            added.append(
                await db_sessions.add_track(
                    conn,
                    session_id,
                    user.id,
                    job_id=body.job_id,
                    output_name=output_name,
                    name=name[:100],
                    duration_ms=duration_ms,
                    settings=settings,
                    parent_track_id=body.parent_track_id,
                )
            )
        await db_sessions.touch(conn, session_id)
        rows = [row for row in await db_sessions.track_rows(conn, session_id) if row[0]["id"] in added]
    return TrackList(tracks=await _track_views(state, rows))


@router.patch(
    "/sessions/{session_id}/tracks/{track_id}",
    response_model=Track,
    responses={**AUTH_RESPONSES, **_NOT_FOUND, **_INVALID},
)
async def update_track(session_id: UUID, track_id: UUID, body: TrackUpdate, user: CurrentUser, state: State) -> Track:
    """Move, trim, rename or mix a track (gain, pan, mute, solo); only the fields sent change."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Problem(422, "invalid_request", "Nothing to change", "Send at least one field to change.")
    required = {"name", "position", "offset_ms", "gain_db", "pan", "mute", "solo", "trim_in_ms"}
    nulls = sorted(name for name in required if name in changes and changes[name] is None)
    if nulls:
        raise Problem(422, "invalid_request", "These fields cannot be null", f"{', '.join(nulls)} cannot be null.")
    async with state.pool.connection() as conn, conn.transaction():
        if await db_sessions.get(conn, session_id, user.id, lock=True) is None:
            raise _not_found()
        rows = await db_sessions.track_rows(conn, session_id, track_id)
        if not rows:
            raise Problem(404, "not_found", "No such track")
        merged = {**rows[0][0], **changes}
        if merged["trim_in_ms"] >= merged["duration_ms"]:
            raise Problem(422, "invalid_request", "Trimmed to nothing", "`trim_in_ms` is past the output's end.")
        if merged["trim_out_ms"] is not None and merged["trim_out_ms"] <= merged["trim_in_ms"]:
            raise Problem(422, "invalid_request", "Trims out of order", "`trim_out_ms` must be after `trim_in_ms`.")
        await db_sessions.update_track(conn, session_id, track_id, changes)
        await db_sessions.touch(conn, session_id)
        rows = await db_sessions.track_rows(conn, session_id, track_id)
    return (await _track_views(state, rows))[0]


@router.delete(
    "/sessions/{session_id}/tracks/{track_id}",
    status_code=204,
    response_class=Response,
    responses={**AUTH_RESPONSES, **_NOT_FOUND},
)
async def remove_track(session_id: UUID, track_id: UUID, user: CurrentUser, state: State) -> Response:
    """Remove a track from the session (its job output stays)."""
    async with state.pool.connection() as conn, conn.transaction():
        if await db_sessions.get(conn, session_id, user.id, lock=True) is None:
            raise _not_found()
        if not await db_sessions.remove_track(conn, session_id, track_id):
            raise Problem(404, "not_found", "No such track")
        await db_sessions.touch(conn, session_id)
    return Response(status_code=204)


class MixdownRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: AudioFormat = "wav"
    sample_rate: Literal[44100, 48000] = 48000


def audible_tracks(tracks: list[Track]) -> list[Track]:
    """What the timeline plays: unmuted tracks, and only soloed ones while any track is soloed."""
    soloed = any(track.solo for track in tracks)
    return [track for track in tracks if not track.mute and (track.solo or not soloed)]


@router.post(
    "/sessions/{session_id}/mixdown",
    status_code=202,
    response_model=JobOut,
    responses={
        **AUTH_RESPONSES,
        **SPEND_RESPONSES,
        **_NOT_FOUND,
        422: problem_doc(422, "nothing_to_mix", "No audible tracks, or an audible track's output expired"),
    },
)
async def mixdown_session(
    session_id: UUID,
    body: MixdownRequest,
    user: CurrentUser,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Submit a `mixdown` job of the session as it sounds now: its audible tracks with their offsets, gains, pans
    and trims. The result is a normal job output (priced per minute of the mix), which can be added as a track or
    sent to another task."""
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    tracks = audible_tracks((await _session_view(state, session_id, user.id)).tracks)
    if not tracks:
        raise Problem(422, "nothing_to_mix", "Nothing to mix", "Every track is muted (or the session is empty).")
    expired = [track.name for track in tracks if track.status == "expired"]
    if expired:
        raise Problem(
            422,
            "nothing_to_mix",
            "A track's audio has expired",
            f"Past retention: {', '.join(expired)}. Remove or mute these tracks first.",
            expired=expired,
        )
    params = {
        "sample_rate": body.sample_rate,
        "format": body.format,
        "tracks": [
            {
                "job_id": str(track.job_id),
                "output": track.output,
                "duration_ms": track.duration_ms,
                "offset_ms": track.offset_ms,
                "gain_db": track.gain_db,
                "pan": track.pan,
                "trim_in_ms": track.trim_in_ms,
                "trim_out_ms": track.trim_out_ms,
            }
            for track in tracks
        ],
    }
    job = await validate_current(JobCreate(task="mixdown", params=params), None, state, quote=False)
    workdir = lazy_workdir("studio-mixdown-")
    try:
        submitted = await submit_once(state, user.id, job, key, workdir, api_key_id=user.api_key_id)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    headers = {"Location": submitted.body["links"]["self"]}
    if submitted.replayed:
        headers[idempotency.REPLAY_HEADER] = "true"
    return JSONResponse(submitted.body, status_code=submitted.status, headers=headers)
