"""GET /v1/files/...: downloads through the signed links of local storage (Supabase Storage serves its own)."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import State
from api.errors import Problem
from api.storage import LocalStorage

router = APIRouter(tags=["files"])

_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file, as an attachment."},
    403: {
        "description": "`bad_signature` or `url_expired`",
        "content": {
            "application/problem+json": {
                "example": {
                    "type": "https://docs.audio-studio.dev/errors/url_expired",
                    "title": "Download link expired",
                    "status": 403,
                    "detail": "Fetch the job again for a fresh link.",
                    "code": "url_expired",
                }
            }
        },
    },
    404: {"description": "`not_found`: the file was deleted", "content": {"application/problem+json": {}}},
}


@router.get(
    "/files/{bucket}/{key:path}",
    responses=_FILE_RESPONSES,
    response_class=FileResponse,
    summary="Download a file through a signed link (local storage only)",
)
async def download_file(
    state: State,
    bucket: str,
    key: str,
    expires: int = Query(...),
    sig: str = Query(..., max_length=128),
    filename: str | None = Query(None, max_length=255),
) -> FileResponse:
    storage = state.storage
    if not isinstance(storage, LocalStorage):
        # With Supabase Storage, links point at Supabase: nothing is served here.
        raise Problem(404, "not_found", "Not found")
    path = storage.verify(bucket, key, expires, filename, sig)
    media_type = mimetypes.guess_type(filename or key)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=filename or Path(key).name)
