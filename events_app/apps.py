from __future__ import annotations

from django.apps import AppConfig


class EventsAppConfig(AppConfig):
    name = "events_app"
    verbose_name = "Events"

    def ready(self) -> None:
        # Registers the tasks in every process, not only in workers (whose Celery loader
        # imports them): the pipeline publishes by task name (events_app/pipeline/queue.py),
        # and a web process must find the name in the app's registry.
        from events_app import tasks  # noqa: F401

        # Imported here, not at the top: the app registry must be ready for the models.
        from events_app.metrics import metrics_hooks_register

        metrics_hooks_register()
