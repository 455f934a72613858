from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class EventsAppConfig(AppConfig):
    name = "events_app"
    verbose_name = "Events"

    def ready(self) -> None:
        # Registers the tasks in every process, not only in workers (whose Celery loader
        # imports them): the pipeline publishes by task name (events_app/pipeline/queue.py),
        # and a web process must find the name in the app's registry.
        # `checks` registers the deploy check of BIGMIND_REDACTION_KEY.
        from events_app import checks, tasks  # noqa: F401

        # Imported here, not at the top: the app registry must be ready for the models.
        from events_app.metrics import metrics_hooks_register

        metrics_hooks_register()

        # Webhook endpoints filter on signals by id: a deleted signal is dropped from them.
        from django.db.models.signals import post_delete

        from signals_app.models import Signal

        post_delete.connect(
            _signal_deleted, sender=Signal, dispatch_uid="events_app-webhook-signal-deleted"
        )

        # `migrate` creates the events table's partitions ahead, as beat does afterwards: a
        # fresh or upgraded deployment has them before its first event.
        from django.db.models.signals import post_migrate

        post_migrate.connect(_migrated, sender=self, dispatch_uid="events_app-partitions")


def _signal_deleted(sender: object, instance: Any, **_: object) -> None:
    from events_app.webhooks.endpoints import signal_deleted

    signal_deleted(
        signal_id=instance.pk, organization_id=instance.organization_id, slug=instance.slug
    )


def _migrated(sender: object, using: str = "default", **_: object) -> None:
    from django.db import connections

    from events_app.partitions.upkeep import partitions_ensure

    partitions_ensure(db=connections[using])
