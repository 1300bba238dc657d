"""`RequestGuard`: a pure-ASGI middleware that bounds every request body before any route sees it.

- Size: every route gets `max_body_bytes` (small: JSON bodies); the upload routes (`UPLOAD_PATHS`, POST) get
  `max_upload_bytes` per file they take plus the form budget; a tus PATCH (`/v1/uploads/{id}`) gets
  `max_resumable_upload_bytes`, streamed to disk by the route (which also refuses bytes past the upload's own
  length). An announced Content-Length past the cap is refused without reading a byte; otherwise the bytes of each
  `http.request` message are counted, so a chunked body (no Content-Length) is cut off at the cap too. 413.
- Time: while the body is incomplete, each read waits at most `body_read_idle_seconds`, and the whole body must
  arrive within its route's read time: the idle limit plus the cap at `MIN_BODY_BYTES_PER_SECOND`, at most
  `body_read_timeout_seconds` (a 1 MiB JSON body gets 46 s, not the uploads' 15 minutes), so a trickling client
  cannot hold a request or a temp upload for long. 408.
- Auth first: a request with a body and no well-formed credential (`api.security.bearer_token`: `Authorization:
  x` is none) gets its 401 before the body is read (FastAPI reads a JSON body before it runs the auth dependency),
  except on the routes that take bodies from callers without a bearer token (`UNAUTHENTICATED_BODY_PATHS`: the
  Stripe webhook, signed by Stripe). Bodiless requests go on to the route, which answers as it always does (a GET
  without a token is refused by the route itself).
- Whenever the answer goes out before the body was read to its end, it says `Connection: close`, so the server
  stops receiving the rest instead of reading and discarding it. A request without a body is complete from the
  start and keeps its connection.
- The guard's own answers are problem+json, or OpenAI's error object on the OpenAI-compatible `/v1/audio/*`.

Once the guard has refused a request, whatever the app does with the error is discarded: the answer is the
guard's own problem+json (FastAPI, for one, turns a failed body read into a 400).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PROBLEM_JSON, Problem, openai_error
from api.jobs.inputs import MAX_FORM_BYTES, too_large
from api.jobs.openai_audio import PATH_PREFIX as OPENAI_PATH_PREFIX
from api.jobs.request import EXTRA_INPUT_NAMES
from api.security import NO_CREDENTIAL, bearer_token, unauthorized
from api.settings import Settings

# POST routes that take an audio upload (multipart): they stream it to a capped temp file themselves.
# The OpenAI-compatible ones take one file; the others one per input (the main one and each of EXTRA_INPUT_NAMES).
SINGLE_FILE_UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
UPLOAD_PATHS = frozenset({"/v1/jobs", "/v1/quotes"}) | SINGLE_FILE_UPLOAD_PATHS
RESUMABLE_UPLOAD_PREFIX = "/v1/uploads/"
UNAUTHENTICATED_BODY_PATHS = frozenset({"/v1/billing/stripe-webhook"})
# Boundaries and part headers around the file and the text fields.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# The slowest a body may arrive on average: a route's total read time is its cap at this rate (plus the idle limit).
MIN_BODY_BYTES_PER_SECOND = 64 * 1024


class _Refused(Exception):
    """Raised into the app from `receive` once the guard has decided the answer."""


def body_cap(settings: Settings, method: str, path: str) -> int:
    if method == "PATCH" and path.startswith(RESUMABLE_UPLOAD_PREFIX):
        return settings.max_resumable_upload_bytes
    if method == "POST" and path in UPLOAD_PATHS:
        files = 1 if path in SINGLE_FILE_UPLOAD_PATHS else 1 + len(EXTRA_INPUT_NAMES)
        return files * settings.max_upload_bytes + MAX_FORM_BYTES + MULTIPART_OVERHEAD_BYTES
    return settings.max_body_bytes


def body_too_large(settings: Settings, method: str, path: str, cap: int) -> Problem:
    """The 413 names the limit a client can act on: the per-file limit on upload routes (each file is capped at
    it by the route), the body cap elsewhere."""
    return too_large(settings.max_upload_bytes if method == "POST" and path in UPLOAD_PATHS else cap)


def read_time(settings: Settings, cap: int) -> float:
    """The most time a body with this cap may take to arrive in full."""
    return min(settings.body_read_timeout_seconds, settings.body_read_idle_seconds + cap / MIN_BODY_BYTES_PER_SECOND)


def request_timeout(seconds: float) -> Problem:
    return Problem(
        408,
        "request_timeout",
        "The request body arrived too slowly",
        f"The body must arrive within {seconds:g} s, with no pause longer than the idle limit.",
    )


class RequestGuard:
    def __init__(self, app: ASGIApp, *, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.settings = settings  # read per request: tests may swap the settings object

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        cap = body_cap(settings, method, path)
        announced = headers.get("content-length")
        has_body = "transfer-encoding" in headers or announced not in (None, "0")
        if has_body and path not in UNAUTHENTICATED_BODY_PATHS and bearer_token(headers.get("authorization")) is None:
            await _answer(scope, send, unauthorized(NO_CREDENTIAL, missing=True), close=True)
            return
        if announced is not None and announced.isdigit() and int(announced) > cap:
            await _answer(scope, send, body_too_large(settings, method, path, cap), close=True)
            return
        guarded = _GuardedRequest(self.app, cap, body_too_large(settings, method, path, cap), has_body=has_body)
        await guarded(scope, receive, send, idle=settings.body_read_idle_seconds, total=read_time(settings, cap))


class _GuardedRequest:
    """One request's body accounting."""

    def __init__(self, app: ASGIApp, cap: int, oversize: Problem, *, has_body: bool) -> None:
        self.app, self.cap, self.oversize = app, cap, oversize
        self.received = 0
        # Without a body there is nothing left to read: the answer may keep the connection.
        self.body_complete = not has_body
        self.refusal: Problem | None = None
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send, *, idle: float, total: float) -> None:
        deadline = time.monotonic() + total

        async def guarded_receive() -> Message:
            if self.refusal is not None:
                raise _Refused
            if self.body_complete:
                return await receive()  # e.g. a streaming response listening for the disconnect: no limit
            wait = min(idle, deadline - time.monotonic())
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                self.refusal = request_timeout(total)
                raise _Refused from None
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.cap:
                    self.refusal = self.oversize
                    raise _Refused
                self.body_complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if self.refusal is not None and not self.started:
                return  # the app's own answer to the refusal: ours goes out instead
            if message["type"] == "http.response.start":
                self.started = True
                if not self.body_complete:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if self.refusal is None or self.started:
                raise
        if self.refusal is not None and not self.started:
            await _answer(scope, send, self.refusal, close=not self.body_complete)


async def _answer(scope: Scope, send: Send, problem: Problem, *, close: bool) -> None:
    """The problem as a response; `close` when a body we will never read is behind it."""

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    headers = {**problem.headers, **({"Connection": "close"} if close else {})}
    if scope["path"].startswith(OPENAI_PATH_PREFIX):  # those routes answer OpenAI's error object, as api.main does
        response = JSONResponse(openai_error(problem), status_code=problem.status, headers=headers)
    else:
        response = JSONResponse(problem.body(), status_code=problem.status, headers=headers, media_type=PROBLEM_JSON)
    await response(scope, nothing, send)
