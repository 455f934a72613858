"""Celery's side of observability: logging, one log line per task, task metrics, the metrics port.

Connected by bigmind/celery.py. Nothing here touches Django at import time (this module is
imported while the settings load); the receivers import what they need when they run.

- `setup_logging`: a receiver makes Celery leave logging alone, so worker and beat log through
  settings.LOGGING like the web (JSON by default) instead of Celery's own text format.
- `before_task_publish`: the id of the HTTP request that queued a task travels in the message's
  headers (`bigmind_request_id`), so a task's line names the request that caused it.
- `task_prerun` / `task_postrun`: one line per task (logger `bigmind.task`): task, task_id,
  request_id, outcome, duration_ms, event_ids (the events it processed, or those its message
  named), event_outcomes, signals, organizations; and the duration histogram.
- `task_success` / `task_failure` / `task_retry` / `task_revoked` / `task_rejected` /
  `task_unknown`: bigmind_worker_tasks_total{task, outcome}.
- `worker_init`: with BIGMIND_WORKER_METRICS_PORT set, the worker's main process serves
  /metrics on it (bigmind.metrics.worker_metrics_server_start).
"""

from __future__ import annotations

import logging
import logging.config
import os
import time
from typing import Any

from celery import signals

logger = logging.getLogger("bigmind.task")

REQUEST_ID_HEADER = "bigmind_request_id"

# Start times of the tasks running in this process, by task id: a plain dict, not a cache, since
# an entry must stay until its task ends (task_postrun pops it), however long that takes.
_started: dict[str, tuple[float, Any]] = {}


@signals.setup_logging.connect
def _logging_setup(**_: Any) -> None:
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.before_task_publish.connect
def _request_id_attach(headers: dict[str, Any] | None = None, **_: Any) -> None:
    from bigmind.logs import log_context

    context = log_context()
    if headers is not None and context is not None and context.get("request_id"):
        headers.setdefault(REQUEST_ID_HEADER, context["request_id"])


def _task_name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    from bigmind.logs import log_context_begin

    if task_id is None:
        return
    request = getattr(task, "request", None)
    # A message's own headers become attributes of the task's request; `apply()` (tests,
    # a shell) keeps them under `headers`.
    request_id = getattr(request, REQUEST_ID_HEADER, None) or (
        getattr(request, "headers", None) or {}
    ).get(REQUEST_ID_HEADER)
    token = log_context_begin(task=_task_name(task), task_id=task_id, request_id=request_id)
    _started[task_id] = (time.perf_counter(), token)


def _message_event_ids(args: Any, kwargs: Any) -> list[str]:
    # Our tasks take ids only (events.process_event: one id; events.process_events: a list).
    values: list[Any] = list(args or ()) + list((kwargs or {}).values())
    ids: list[str] = []
    for value in values:
        items = value if isinstance(value, list | tuple) else [value]
        ids.extend(str(item) for item in items if isinstance(item, str))
    return ids


@signals.task_postrun.connect
def _task_finished(
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    from bigmind import metrics
    from bigmind.logs import MAX_EVENT_IDS, log_context, log_context_end

    started = _started.pop(task_id or "", None)
    if started is None:
        return
    elapsed = time.perf_counter() - started[0]
    name = _task_name(task)
    try:
        metrics.WORKER_TASK_DURATION.labels(name).observe(elapsed)
        context = log_context() or {}
        line: dict[str, Any] = {
            "task": name,
            "task_id": task_id,
            "request_id": context.get("request_id"),
            "outcome": (state or "unknown").lower(),
            "duration_ms": round(elapsed * 1000, 2),
        }
        if "event_ids" in context:
            line["event_ids"] = context["event_ids"]
            line["event_count"] = context.get("event_count", len(context["event_ids"]))
        else:
            named = _message_event_ids(args, kwargs)
            if named:
                line["event_ids"] = named[:MAX_EVENT_IDS]
                line["event_count"] = len(named)
        for key in ("event_outcomes", "signals", "organizations"):
            if key in context:
                line[key] = context[key]
        logger.info("task %s %s %.1fms", name, line["outcome"], elapsed * 1000, extra=line)
    except Exception:  # a log line must never fail a task
        logger.exception("could not write the task log line")
    finally:
        log_context_end(started[1])


def _count(task: Any, outcome: str) -> None:
    from bigmind import metrics

    metrics.WORKER_TASKS.labels(_task_name(task), outcome).inc()


@signals.task_success.connect
def _task_success(sender: Any = None, **_: Any) -> None:
    _count(sender, "success")


@signals.task_failure.connect
def _task_failure(sender: Any = None, **_: Any) -> None:
    _count(sender, "failure")


@signals.task_retry.connect
def _task_retry(sender: Any = None, **_: Any) -> None:
    _count(sender, "retry")


@signals.task_revoked.connect
def _task_revoked(sender: Any = None, **_: Any) -> None:
    _count(sender, "revoked")


@signals.task_rejected.connect
def _task_rejected(**_: Any) -> None:
    _count(None, "rejected")  # a message the worker could not accept: no task to name


@signals.task_unknown.connect
def _task_unknown(**_: Any) -> None:
    _count(None, "unknown")  # a task name this worker does not know: never a label of its own


@signals.worker_init.connect
def _worker_metrics_start(**_: Any) -> None:
    from django.conf import settings

    from bigmind import metrics

    # Before the pool forks: the children then write to an empty directory, never to files
    # of a previous run of this worker.
    metrics.multiprocess_dir_reset()
    port = settings.BIGMIND_WORKER_METRICS_PORT
    if not port:
        return
    if not metrics.multiprocess_enabled():
        logging.getLogger(__name__).warning(
            "BIGMIND_WORKER_METRICS_PORT is set without PROMETHEUS_MULTIPROC_DIR: a prefork "
            "pool's children count in their own memory and their tasks will not be reported"
        )
    metrics.worker_metrics_server_start(port=port, addr=settings.BIGMIND_WORKER_METRICS_ADDR)
    logging.getLogger(__name__).info(
        "worker metrics on http://%s:%d/metrics", settings.BIGMIND_WORKER_METRICS_ADDR, port
    )


@signals.worker_process_shutdown.connect
def _worker_child_gone(pid: int | None = None, **_: Any) -> None:
    from bigmind import metrics

    if metrics.multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
