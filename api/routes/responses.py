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


class SpendProblem(ProblemBody):
    """A submit refused for money: `required` and `available` (the balance), or `cap` and `spent` (an API key's cap)."""

    required: int | None = None
    available: int | None = None
    cap: int | None = None
    spent: int | None = None
    allowed_tasks: list[str] | None = None


def problem_doc(status: int, code: str, description: str, *, model: type[ProblemBody] = ProblemBody) -> dict[str, Any]:
    """An OpenAPI `responses=` entry for a problem+json answer, its example rendered by `Problem` itself."""
    example = Problem(status, code, description).body()
    return {
        "model": model,
        "description": description,
        "content": {"application/problem+json": {"example": example}},
    }


# What a submit may answer for money, before anything is held: the balance, or the caps of the API key it came with.
SPEND_RESPONSES: dict[int | str, dict[str, Any]] = {
    402: problem_doc(
        402,
        "insufficient_credits",
        "Not enough credits (`insufficient_credits`, with `required` and `available`), or the API key's spend cap"
        " would be passed (`key_daily_cap`, `key_monthly_cap`, with `cap`, `spent` and `required`); nothing charged",
        model=SpendProblem,
    ),
    403: problem_doc(
        403,
        "task_not_allowed_for_key",
        "The API key may not submit this task (`allowed_tasks` lists what it may); nothing charged",
        model=SpendProblem,
    ),
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
