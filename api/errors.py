"""RFC 9457 problem+json errors with a stable `code`, for every failure the API returns.

No web framework here: job code raises `Problem` too; `api.main` turns it into an HTTP response."""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"
# Read by the OpenAI SDKs (which otherwise retry any 5xx twice, without an Idempotency-Key): do not retry this answer.
NO_RETRY = {"x-should-retry": "false"}


class Problem(Exception):
    """Raise anywhere in a request to answer with problem+json. `extra` members are added to the body."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://docs.audio-studio.dev/errors/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
            "code": self.code,
        }
        body.update(self.extra)
        return body


# OpenAI's error `type` for each status (its SDK picks the exception class from the status alone).
_OPENAI_TYPES = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def openai_error(problem: Problem) -> dict[str, Any]:
    """The problem as OpenAI's error object (the /v1/audio/* routes): `{"error": {message, type, param, code}}`,
    with our extra members (job_id, required, available, errors...) kept beside them."""
    message = problem.title if problem.detail in (None, problem.title) else f"{problem.title}: {problem.detail}"
    default = "server_error" if problem.status >= 500 else "invalid_request_error"
    error: dict[str, Any] = {
        "message": message,
        "type": _OPENAI_TYPES.get(problem.status, default),
        "param": problem.extra.get("param"),
        "code": problem.code,
    }
    error.update({key: value for key, value in problem.extra.items() if key != "param"})
    return {"error": error}
