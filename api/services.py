"""The background loops an API process runs beside its routes."""

from __future__ import annotations

from api.app import AppState, BackgroundService


def background_services(state: AppState) -> list[BackgroundService]:
    from api.events import EventsHub
    from api.reaper import ReaperLoop
    from api.webhooks import WebhookDeliverer

    hub = EventsHub(state)
    state.services["events"] = hub
    services: list[BackgroundService] = [hub, WebhookDeliverer(state)]
    if state.settings.dispatcher == "local":
        # On Modal the reaper and retention run as Cron functions instead (modal_app.py).
        services.append(ReaperLoop(state))
    return services
