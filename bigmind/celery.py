from __future__ import annotations

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigmind.settings")

app = Celery("bigmind")
app.config_from_object("bigmind.celery_config", namespace="CELERY")
# Queues are declared explicitly so operators can run dedicated workers per queue
# (`celery -A bigmind worker -Q events.process`).
app.conf.task_queues = (
    Queue("default", Exchange("default"), routing_key="default"),
    Queue("events.process", Exchange("events"), routing_key="events.process"),
)
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _database_connections_refresh(sender: object = None, **_: object) -> None:
    """Apply CONN_MAX_AGE and CONN_HEALTH_CHECKS around each task, as Django does per request.

    With CELERY_DB_REUSE_MAX set, Celery keeps the worker's connection across tasks; without
    this, a connection broken by a database restart would fail the next task instead of being
    replaced.
    """
    from django.db import close_old_connections

    # An eager call runs inside the caller's transaction (a test, a shell): leave it alone, as
    # Celery's own fixup does.
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()
