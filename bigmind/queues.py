"""The Celery queues the app declares, classic or RabbitMQ quorum queues (docs/brokers.md).

Quorum queues (CELERY_QUORUM_QUEUES=true) are RabbitMQ's replicated queues: a message a
publisher was told is stored survives the loss of a minority of the cluster's nodes. What Celery
needs with them:
- every queue declared with `x-queue-type: quorum`, durable (kombu's default; quorum queues
  cannot be anything else), including those Celery creates itself for an unknown queue name;
- no global QoS, which quorum queues refuse: Celery then sets the prefetch per consumer
  (`worker_detect_quorum_queues`, on by default, stated here so that it stays on);
- countdowns (the pipeline's retries, webhook retries) by native delayed delivery: quorum queues
  have no per-message delays, so Celery 5.5+ routes a delayed message through a chain of
  `celery_delayed_*` queues with message TTLs that dead-letter it into the task's queue when due.
  That chain reaches a queue through a topic exchange only: with direct exchanges Celery warns
  and the worker would instead hold the message, unacknowledged, until it is due.
A queue declared classic cannot be declared again as quorum (RabbitMQ refuses a declaration
whose arguments differ, nor can an exchange change type): switching takes a new virtual host or
new names, and draining the old queues (docs/brokers.md, "Switching to quorum queues").
"""

from __future__ import annotations

from kombu import Exchange, Queue

# (queue, exchange, routing key). Declared explicitly so operators can run dedicated workers
# per queue (`celery -A bigmind worker -Q events.process`).
QUEUES = (
    ("default", "default", "default"),
    ("events.process", "events", "events.process"),
    ("webhooks", "webhooks", "webhooks"),
)
QUORUM_ARGUMENTS = {"x-queue-type": "quorum"}


def task_queues(*, quorum: bool) -> tuple[Queue, ...]:
    """The app's queues; with `quorum`, quorum queues bound to topic exchanges (a routing key
    without wildcards matches only itself, so routing is what the direct exchanges did)."""
    exchange_type = "topic" if quorum else "direct"
    return tuple(
        Queue(
            name,
            Exchange(exchange, type=exchange_type, durable=True),
            routing_key=routing_key,
            durable=True,
            queue_arguments=dict(QUORUM_ARGUMENTS) if quorum else None,
        )
        for name, exchange, routing_key in QUEUES
    )


def quorum_conf() -> dict[str, object]:
    """Celery's settings that go with quorum queues (see the module)."""
    return {
        "task_default_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }
