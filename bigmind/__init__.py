from __future__ import annotations

# Before anything imports jsonschema: its IRI formats' grammar is built on first use, not at
# every process start (bigmind/iri_format.py).
from bigmind.iri_format import defer_iri_grammar

defer_iri_grammar()

# Load the Celery app whenever Django starts so that @shared_task binds to it and
# `transaction.on_commit(task.delay)` publishes with the project's broker settings.
from bigmind.celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
