"""`create_app`: the FastAPI factory, and the only module that imports the routes. Collaborators come in an
`AppState` (`api.wiring` builds one for local mode or production; tests build their own)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import PROBLEM_JSON, Problem, openai_error
from api.jobs.openai_audio import PATH_PREFIX as OPENAI_PATH_PREFIX
from api.request_guard import RequestGuard
from api.routes import (
    api_keys,
    batches,
    billing,
    credits,
    events,
    files,
    health,
    jobs,
    openai_audio,
    sessions,
    studio,
    tasks,
    uploads,
    usage,
    webhooks,
)
from api.routes.responses import complete_error_responses
from api.state import AppState, BackgroundService

log = logging.getLogger("studio.api")


def create_app(state: AppState, background: list[BackgroundService] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for service in background or []:
            await service.start()
        try:
            yield
        finally:
            for service in reversed(background or []):
                await service.stop()

    app = FastAPI(
        title="Audio Studio API",
        version="1.0.0",
        description="GPU audio AI: stem separation, speech enhancement, transcription, audio-to-MIDI and "
        "text-to-audio. Errors are application/problem+json with a stable `code`. Request bodies are capped "
        "(413 `payload_too_large`; uploads on POST /v1/jobs and /v1/quotes, a small cap elsewhere) and must "
        "arrive in time (408 `request_timeout`); a body sent without a well-formed `Authorization: Bearer` credential "
        "is refused unread (401).",
        lifespan=lifespan,
    )
    app.state.studio = state
    install_error_handlers(app)
    v1 = APIRouter(prefix="/v1")
    resources = (
        health,
        api_keys,
        credits,
        usage,
        tasks,
        jobs,
        batches,
        uploads,
        openai_audio,
        events,
        billing,
        webhooks,
        files,
        sessions,
    )
    for resource in resources:
        v1.include_router(resource.router)
    app.include_router(v1)
    # The web studio's pages sit at the root; its two /v1 routes (config, local sign-in) carry their own prefix.
    app.include_router(studio.build_router(state.settings))
    app.add_middleware(RequestGuard, settings=lambda: state.settings)
    _document_errors_exactly(app)
    return app


def _document_errors_exactly(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_error_responses(build(), OPENAI_PATH_PREFIX)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    """problem+json, except on the OpenAI-compatible routes, which answer OpenAI's error object (same status)."""
    if request.url.path.startswith(OPENAI_PATH_PREFIX):
        return JSONResponse(openai_error(problem), status_code=problem.status, headers=problem.headers)
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Drop pydantic's `input`/`ctx`/`url`: they can echo large or sensitive request content.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            Problem(
                422,
                "invalid_request",
                "The request is not valid",
                "See `errors` for each invalid field.",
                errors=_validation_errors(exc),
            ),
            request,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(
            Problem(
                exc.status_code,
                code,
                detail or code.replace("_", " ").capitalize(),
                headers=getattr(exc, "headers", None),
            ),
            request,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Log the trace server-side; the client gets no internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            Problem(500, "internal_error", "Internal server error", "Something went wrong on our side; retry later."),
            request,
        )
