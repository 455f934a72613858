from __future__ import annotations

from django.apps import AppConfig


class EventsAppConfig(AppConfig):
    name = "events_app"
    verbose_name = "Events"

    def ready(self) -> None:
        # Imported here, not at the top: the app registry must be ready for the models.
        from events_app.metrics import metrics_hooks_register

        metrics_hooks_register()
