"""/v1/webhooks: the user's webhook signing secret."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.background import webhooks as deliveries
from api.deps import CurrentUser, State

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

_UNAUTHORIZED = {
    401: {
        "description": "Missing or invalid bearer token",
        "content": {
            "application/problem+json": {
                "example": {
                    "type": "https://docs.audio-studio.dev/errors/unauthorized",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "A valid bearer token is required.",
                    "code": "unauthorized",
                }
            }
        },
    }
}


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="Standard Webhooks secret (`whsec_` + base64 key) that signs every delivery.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    created_at: datetime
    rotated_at: datetime | None = None


@router.get(
    "/secret",
    response_model=WebhookSecret,
    responses=_UNAUTHORIZED,
    summary="Your webhook signing secret (created on first call)",
)
async def get_secret(user: CurrentUser, state: State) -> WebhookSecret:
    async with state.pool.connection() as conn:
        return WebhookSecret(**await deliveries.ensure_secret(conn, user.id))


@router.post(
    "/secret/rotate",
    response_model=WebhookSecret,
    responses=_UNAUTHORIZED,
    summary="Replace your webhook signing secret; later deliveries, retries included, use the new one",
)
async def rotate_secret(user: CurrentUser, state: State) -> WebhookSecret:
    async with state.pool.connection() as conn:
        return WebhookSecret(**await deliveries.rotate_secret(conn, user.id))
