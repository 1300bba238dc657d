"""GET /v1/health: liveness and database reachability."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import psycopg
from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import State
from api.errors import Problem
from api.routes.responses import problem_doc

log = logging.getLogger("studio.api")
HEALTH_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["up"] = "up"


@router.get(
    "/health",
    response_model=Health,
    responses={503: problem_doc(503, "database_unavailable", "The database is unreachable")},
)
async def health(state: State) -> Health:
    """Liveness and database reachability. No authentication."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            async with state.pool.connection(timeout=HEALTH_TIMEOUT_SECONDS) as conn:
                await conn.execute("SELECT 1")
    except (TimeoutError, psycopg.Error) as exc:
        log.warning("health check: database unreachable: %s", exc)
        raise Problem(503, "database_unavailable", "The database is unreachable", headers={"Retry-After": "5"}) from exc
    return Health()
