"""POST /v1/uploads and the tus 1.0 resource /v1/uploads/{id} (HEAD, PATCH, DELETE, OPTIONS; GET for JSON).

Two ways in, one resource. A JSON body (`filename`, `size`, `content_type`) is how the CLI and the studio start:
production answers with the Supabase Storage authorization (`tus`) the client uploads with, local mode with the
`upload_url` on this API to PATCH. A tus creation request (`Tus-Resumable`, `Upload-Length`, `Upload-Metadata`) is
how any stock tus client starts, in local mode. The logic lives in `api.jobs.uploads`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from api.deps import CurrentUser, State
from api.errors import Problem
from api.jobs import uploads
from api.routes.responses import AUTH_RESPONSES, problem_doc

router = APIRouter(tags=["uploads"])


class UploadCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"filename": "concert.flac", "size": 734003200, "content_type": "audio/flac"}]},
    )

    filename: str | None = Field(default=None, max_length=255)
    size: int = Field(gt=0, description="The file's exact size in bytes (at most the deployment's resumable cap).")
    content_type: str | None = Field(default=None, max_length=255, description="An audio/* or a generic binary type.")


class TusAuthorization(BaseModel):
    endpoint: str = Field(description="Supabase Storage's signed tus endpoint: create the upload there.")
    headers: dict[str, str] = Field(description="Send these on every tus request (`x-signature`: the token).")
    metadata: dict[str, str] = Field(description="The tus Upload-Metadata to create the upload with.")
    chunk_size: int = Field(description="Storage's part size: every PATCH but the last carries exactly this much.")


class UploadOut(BaseModel):
    id: UUID
    object: Literal["upload"] = "upload"
    state: Literal["uploading", "complete", "used", "expired"]
    filename: str
    content_type: str
    size: int
    offset: int = Field(description="Bytes received (local mode); production learns the size when a job reads it.")
    created_at: datetime
    expires_at: datetime
    job_id: UUID | None = Field(description="The job that took the upload as its input.")
    upload_url: str | None = Field(description="Local mode: the tus URL on this API to PATCH the bytes to.")
    tus: TusAuthorization | None = Field(
        default=None, description="Production, on creation only: upload straight to Supabase Storage with this."
    )


def _resource(request: Request, row: dict[str, Any], tus: dict[str, Any] | None = None) -> dict[str, Any]:
    local = row["backend"] == "local"
    return UploadOut(
        id=row["id"],
        state=row["state"],
        filename=row["filename"],
        content_type=row["content_type"],
        size=row["size"],
        offset=row["upload_offset"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        job_id=row["job_id"],
        upload_url=_upload_url(request, row["id"]) if local else None,
        tus=TusAuthorization.model_validate(tus) if tus else None,
    ).model_dump(mode="json")


def _upload_url(request: Request, upload_id: UUID) -> str:
    return f"{str(request.base_url).rstrip('/')}/v1/uploads/{upload_id}"


def _tus_headers(row: dict[str, Any]) -> dict[str, str]:
    return {
        "Tus-Resumable": uploads.TUS_VERSION,
        "Upload-Offset": str(row["upload_offset"]),
        "Upload-Length": str(row["size"]),
        "Upload-Expires": uploads.expires_header(row["expires_at"]),
        "Cache-Control": "no-store",
    }


def _require_tus(version: str | None) -> None:
    if version != uploads.TUS_VERSION:
        raise Problem(
            412,
            "tus_version_unsupported",
            "Unsupported tus version",
            f"Send `Tus-Resumable: {uploads.TUS_VERSION}`.",
            headers={"Tus-Version": uploads.TUS_VERSION},
        )


def _upload_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise Problem(404, "upload_not_found", "Upload not found", "No upload with this id belongs to you.") from None


def _int_header(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or len(value) > 19:
        raise Problem(400, "bad_request", f"Invalid {name}", f"`{name}` must be a non-negative integer.")
    return int(value)


_NOT_FOUND = {
    404: problem_doc(404, "upload_not_found", "No such upload for this user"),
    410: problem_doc(410, "upload_expired", "The upload expired unused"),
}
_TUS_OPTIONS_HEADERS = {
    "Tus-Resumable": {"schema": {"type": "string"}},
    "Upload-Offset": {"schema": {"type": "integer"}},
    "Upload-Expires": {"schema": {"type": "string"}},
}
_CREATE_BODY = {
    "requestBody": {
        "required": False,
        "description": "JSON (any client), or no body with tus creation headers (local mode).",
        "content": {"application/json": {"schema": UploadCreate.model_json_schema()}},
    }
}


@router.options("/uploads", include_in_schema=False)
@router.options("/uploads/{upload_id}", include_in_schema=False)
async def tus_options(state: State) -> Response:
    """tus discovery: version, extensions, the size cap and checksum algorithms."""
    return Response(
        status_code=204,
        headers={
            "Tus-Resumable": uploads.TUS_VERSION,
            "Tus-Version": uploads.TUS_VERSION,
            "Tus-Extension": uploads.TUS_EXTENSIONS,
            "Tus-Max-Size": str(state.settings.max_resumable_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(uploads.CHECKSUM_ALGORITHMS),
        },
    )


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    openapi_extra=_CREATE_BODY,
    summary="Start a resumable upload (tus 1.0)",
    responses={
        201: {"model": UploadOut, "description": "Created; `Location` is the tus URL (local mode)."},
        **AUTH_RESPONSES,
        409: problem_doc(409, "upload_direct_only", "tus creation on a deployment that uploads to storage"),
        412: problem_doc(412, "tus_version_unsupported", "Tus-Resumable is not 1.0.0"),
        413: problem_doc(413, "payload_too_large", "Larger than the resumable upload cap"),
        415: problem_doc(415, "unsupported_media_type", "Not an audio or generic binary content type"),
        422: problem_doc(422, "invalid_request", "Invalid body or Upload-Length"),
    },
)
async def create_upload(
    request: Request,
    user: CurrentUser,
    state: State,
    tus_resumable: Annotated[str | None, Header()] = None,
    upload_length: Annotated[str | None, Header()] = None,
    upload_metadata: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """With a JSON body: production answers `tus`, a Supabase Storage authorization for this one object (send the
    bytes there with any tus client); local mode answers `upload_url`. Without one: tus creation (local mode)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json":
        try:
            create = UploadCreate.model_validate_json(await request.body())
        except ValueError as exc:
            raise Problem(422, "invalid_request", "The request is not valid", str(exc)[:500]) from exc
        row, tus = await uploads.authorize(state, user.id, create.size, create.filename, create.content_type)
    else:
        _require_tus(tus_resumable)
        if upload_length is None:
            raise Problem(
                400, "bad_request", "Missing Upload-Length", "Send the size (Upload-Defer-Length is not supported)."
            )
        metadata = uploads.metadata_header(upload_metadata)
        row = await uploads.create(
            state,
            user.id,
            _int_header(upload_length, "Upload-Length"),
            metadata.get("filename") or metadata.get("name"),
            metadata.get("filetype") or metadata.get("contentType") or metadata.get("content_type"),
        )
        tus = None
    headers = {"Tus-Resumable": uploads.TUS_VERSION, "Upload-Expires": uploads.expires_header(row["expires_at"])}
    if row["backend"] == "local":
        headers["Location"] = _upload_url(request, row["id"])
    return JSONResponse(_resource(request, row, tus), status_code=201, headers=headers)


@router.get(
    "/uploads/{upload_id}",
    response_model=UploadOut,
    summary="An upload's state",
    responses={**AUTH_RESPONSES, **_NOT_FOUND},
)
async def get_upload(upload_id: str, request: Request, user: CurrentUser, state: State) -> JSONResponse:
    row = await uploads.get(state, user.id, _upload_id(upload_id))
    return JSONResponse(_resource(request, row))


@router.head(
    "/uploads/{upload_id}",
    status_code=200,
    summary="tus: how many bytes the upload has (resume from Upload-Offset)",
    responses={
        200: {"description": "Upload-Offset, Upload-Length, Upload-Expires", "headers": _TUS_OPTIONS_HEADERS},
        **AUTH_RESPONSES,
        **_NOT_FOUND,
        412: problem_doc(412, "tus_version_unsupported", "Tus-Resumable is not 1.0.0"),
    },
)
async def head_upload(
    upload_id: str, user: CurrentUser, state: State, tus_resumable: Annotated[str | None, Header()] = None
) -> Response:
    _require_tus(tus_resumable)
    row = await uploads.settled(state, user.id, _upload_id(upload_id))
    return Response(status_code=200, headers=_tus_headers(row))


@router.patch(
    "/uploads/{upload_id}",
    status_code=204,
    summary="tus: append bytes at Upload-Offset (local mode)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={
        204: {"description": "Stored; Upload-Offset is the new offset", "headers": _TUS_OPTIONS_HEADERS},
        **AUTH_RESPONSES,
        **_NOT_FOUND,
        409: problem_doc(409, "offset_mismatch", "Upload-Offset is not the upload's offset (HEAD it)"),
        412: problem_doc(412, "tus_version_unsupported", "Tus-Resumable is not 1.0.0"),
        413: problem_doc(413, "payload_too_large", "More bytes than Upload-Length"),
        415: problem_doc(415, "unsupported_media_type", "Not application/offset+octet-stream"),
        423: problem_doc(423, "upload_locked", "Another request is writing this upload"),
        460: problem_doc(460, "checksum_mismatch", "The chunk did not match Upload-Checksum"),
    },
)
async def patch_upload(
    upload_id: str,
    request: Request,
    user: CurrentUser,
    state: State,
    tus_resumable: Annotated[str | None, Header()] = None,
    upload_offset: Annotated[str | None, Header()] = None,
    upload_checksum: Annotated[str | None, Header()] = None,
) -> Response:
    _require_tus(tus_resumable)
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/offset+octet-stream":
        raise Problem(415, "unsupported_media_type", "Unsupported media type", "Send application/offset+octet-stream.")
    offset = _int_header(upload_offset, "Upload-Offset")
    checksum = uploads.parse_checksum(upload_checksum)
    try:
        row = await uploads.append(state, user.id, _upload_id(upload_id), offset, request.stream(), checksum)
    except ClientDisconnect:
        # The connection dropped mid-body: what arrived is recorded, and the client resumes from HEAD. Nobody
        # reads this answer; it only keeps the server from logging an expected event as an error.
        return Response(status_code=400)
    return Response(status_code=204, headers=_tus_headers(row))


@router.delete(
    "/uploads/{upload_id}",
    status_code=204,
    summary="tus termination: delete an upload no job has taken",
    responses={
        **AUTH_RESPONSES,
        **_NOT_FOUND,
        409: problem_doc(409, "upload_used", "A job has taken the upload"),
        412: problem_doc(412, "tus_version_unsupported", "Tus-Resumable is not 1.0.0"),
    },
)
async def delete_upload(
    upload_id: str, user: CurrentUser, state: State, tus_resumable: Annotated[str | None, Header()] = None
) -> Response:
    _require_tus(tus_resumable)
    await uploads.terminate(state, user.id, _upload_id(upload_id))
    return Response(status_code=204, headers={"Tus-Resumable": uploads.TUS_VERSION})
