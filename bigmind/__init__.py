from __future__ import annotations

# Load the Celery app whenever Django starts so that @shared_task binds to it and
# `transaction.on_commit(task.delay)` publishes with the project's broker settings.
from bigmind.celery import app as celery_app

__all__ = ("celery_app",)
