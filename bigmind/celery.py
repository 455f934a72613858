from __future__ import annotations

import os

from celery import Celery
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
