"""OpenAPI documentation of problem+json answers, shared by the route modules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.errors import Problem


class ProblemBody(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str


def problem_doc(status: int, code: str, description: str) -> dict[str, Any]:
    """An OpenAPI `responses=` entry for a problem+json answer, its example rendered by `Problem` itself."""
    example = Problem(status, code, description).body()
    return {
        "model": ProblemBody,
        "description": description,
        "content": {"application/problem+json": {"example": example}},
    }


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: problem_doc(401, "unauthorized", "Missing, invalid or expired credentials"),
    429: problem_doc(
        429,
        "rate_limited",
        "Too many requests (`rate_limited`), or too many failed sign-ins from this address (`too_many_failed_auth`); "
        "see Retry-After",
    ),
}
