"""OpenAPI documentation of problem+json answers, shared by the route modules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.errors import Problem, openai_error


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


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(ProblemBody):
    """A request refused as invalid: `errors` names each invalid field where the refusal is per field."""

    errors: list[FieldError] | None = None


class OpenAIErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class OpenAIError(BaseModel):
    """OpenAI's error object, which the OpenAI-compatible routes (/v1/audio/*) answer instead of problem+json."""

    error: OpenAIErrorObject


_COMPONENTS = "#/components/schemas/{model}"
_ANSWERED_BY_GUARD_OR_LIMITER = {
    # FastAPI documents none of these itself; the request guard, the body readers and the rate limiter answer them.
    "400": ("bad_request", "Malformed request: a body that is not valid JSON or multipart, or a malformed header"),
    "408": ("request_timeout", "The request body did not arrive in time"),
    "413": ("payload_too_large", "The request body is larger than this route accepts"),
    "422": ("invalid_request", "The request is not valid (`errors` names each invalid field)"),
    "429": (
        "rate_limited",
        "Too many requests (`rate_limited`), or too many failed sign-ins from this address (`too_many_failed_auth`);"
        " see Retry-After",
    ),
}


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_COMPONENTS)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _COMPONENTS.format(model=model.__name__)}


def _error_schema(response: dict[str, Any], status: str, components: dict[str, Any]) -> dict[str, str]:
    current = response.get("content", {}).get("application/json", {}).get("schema", {})
    if status == "422" or current.get("$ref", "").endswith("/HTTPValidationError"):
        return _schema_ref(ValidationProblem, components)
    return current or _schema_ref(ProblemBody, components)


def complete_error_responses(openapi: dict[str, Any], openai_prefix: str) -> dict[str, Any]:
    """The one place that makes every operation's error answers exact, after FastAPI built the document.

    Every 4xx and 5xx answer is documented as what the API sends: `application/problem+json` with its schema
    (FastAPI files a `responses=` model under application/json, and its default 422 is a body we never send), or,
    under `openai_prefix`, OpenAI's error object as application/json. Each operation also lists the answers no route
    declares: 400/408/413 where it takes a body, 400/422 where it takes parameters, 429 where it needs credentials.
    """
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in openapi["paths"].items():
        openai = path.startswith(openai_prefix)
        for operation in operations.values():
            responses = operation["responses"]
            takes_body = "requestBody" in operation
            added = set()
            if takes_body:
                added |= {"400", "408", "413", "422"}
            if operation.get("parameters"):
                added |= {"400", "422"}
            if "401" in responses:
                added.add("429")
            for status in sorted(added - responses.keys()):
                code, description = _ANSWERED_BY_GUARD_OR_LIMITER[status]
                problem = Problem(int(status), code, description)
                example = openai_error(problem) if openai else problem.body()
                responses[status] = {"description": description, "content": {"application/json": {"example": example}}}
            for status, response in responses.items():
                if status[0] not in "45":
                    continue
                content = response.setdefault("content", {})
                if openai:
                    content["application/json"] = {
                        **content.get("application/json", {}),
                        "schema": _schema_ref(OpenAIError, components),
                    }
                    continue
                schema = _error_schema(response, status, components)
                example = content.pop("application/json", {}).get("example")
                problem = content.pop("application/problem+json", {})
                if example is not None and "example" not in problem:
                    problem["example"] = example
                content["application/problem+json"] = {**problem, "schema": schema}
                if status == "422" and response.get("description") == "Validation Error":
                    response["description"] = _ANSWERED_BY_GUARD_OR_LIMITER["422"][1]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return openapi
