"""The stack the fault suite breaks: private PostgreSQL, two private Redis servers (broker and
cache), gunicorn, two Celery workers of the pipeline's queues and beat, started once per session
(the webhook fault starts its own `webhooks` worker).

Skipped when the PostgreSQL 15 server binaries or redis-server are missing, so that `make test`
passes on a machine without them; with BIGMIND_REQUIRE_FAULT=1 (CI) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    PrivatePostgres,
    PrivateRedis,
    Service,
    Worker,
    beat_start,
    free_port,
    gunicorn_start,
    manage,
    missing_binaries,
    worker_start,
    workers_stop,
)
from tests.reliability.report import markdown_table, report_dir, webhook_table

HERE = Path(__file__).parent
ORGANIZATION = "fault-suite"
DATABASE = "bigmind_fault"
# One metric signal per fault, so that each test's rollups are its own.
SIGNALS = {
    "worker-sigkill": "fault-worker-sigkill",
    "redis-restart": "fault-redis-restart",
    "postgres-restart": "fault-postgres-restart",
    "cache-unreachable": "fault-cache-unreachable",
    "web-sigkill": "fault-web-sigkill",
    "webhook-worker-sigkill": "fault-webhook-worker-sigkill",
}
# How the app runs during the suite: recovery paths on a short clock, so that a fault is over in
# seconds rather than the production defaults' minutes (docs/reliability.md).
APP_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "fault-suite-only-not-a-real-secret-0123456789abcdef",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "BIGMIND_PROCESSOR": "local",
    "BIGMIND_RATE_LIMIT_METRIC": "100000000",
    # A processing event whose worker died is handed back after time limit + margin (12 s).
    "CELERY_TASK_SOFT_TIME_LIMIT": "8",
    "CELERY_TASK_TIME_LIMIT": "10",
    "BIGMIND_SWEEP_STUCK_MARGIN_SECONDS": "2",
    "BIGMIND_SWEEP_INTERVAL_SECONDS": "2",
    # Long enough that a normal backlog is not queued twice, short enough for a quick recovery.
    "BIGMIND_SWEEP_PENDING_AFTER_SECONDS": "10",
    "BIGMIND_RETRY_BACKOFF_SECONDS": "0.5",
    "BIGMIND_RETRY_BACKOFF_MAX_SECONDS": "4",
    "CACHE_KEY_PREFIX": "bigmind-fault",
    # Backpressure stays off: its 503s would be mixed with the outages' (a test of its own).
    "BIGMIND_BACKPRESSURE_MAX_PENDING": "0",
    "BIGMIND_WORKER_METRICS_PORT": "0",  # two workers on one machine: no port to share
    # Webhooks go to a receiver in the test process, on 127.0.0.1. A claim of a sender killed
    # mid-send is taken again after 3 s (the receiver answers within 0.1 s), and a failed
    # attempt is retried within seconds.
    "BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS": "3",
    "BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS": "0.5",
    "BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS": "4",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}
GUNICORN_WORKERS = int(os.environ.get("BIGMIND_FAULT_GUNICORN_WORKERS", "3"))
CELERY_WORKERS = 2
# The suite's workers: not `webhooks`, which only the webhook fault's own worker consumes (a
# thread pool, as deployed), so that the worker it kills is the one sending.
PIPELINE_QUEUES = ("default", "events.process")


def _required() -> bool:
    return os.environ.get("BIGMIND_REQUIRE_FAULT") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_binaries()
    if reason is None or _required():
        return  # under BIGMIND_REQUIRE_FAULT=1 the `fault_stack` fixture fails with the reason
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.skip(reason=f"fault suite: {reason}"))


@dataclass
class FaultStack:
    root: Path
    logs: Path
    var_dir: Path  # the test session's: the report goes there
    postgres: PrivatePostgres
    broker: PrivateRedis
    cache: PrivateRedis
    env: dict[str, str]
    port: int = 0
    api_key: str = ""
    organization_id: int = 0
    signal_ids: dict[str, int] = field(default_factory=dict)
    gunicorn: Service | None = None
    beat: Service | None = None
    workers: list[Worker] = field(default_factory=list)

    def worker_start(self) -> Worker:
        worker = worker_start(
            env=self.env, log_dir=self.logs, concurrency=1, queues=PIPELINE_QUEUES
        )
        self.workers.append(worker)
        worker.wait_ready(timeout=90)
        return worker

    def db(self) -> Any:
        return self.postgres.connect(DATABASE, autocommit=True)

    def problems(self) -> list[str]:
        """What is not running as it should (checked before each fault)."""
        found = []
        if not self.postgres.running():
            found.append("PostgreSQL is not running")
        for server in (self.broker, self.cache):
            if not server.ping():
                found.append(f"redis {server.name} does not answer")
        for service in (self.gunicorn, self.beat):
            if service is None or not service.alive():
                found.append(f"{service.name if service else 'a service'} is not running")
        live = [worker for worker in self.workers if worker.alive()]
        if len(live) != CELERY_WORKERS:
            found.append(f"{len(live)} Celery workers alive, expected {CELERY_WORKERS}")
        return found


def _seed(stack: FaultStack) -> None:
    manage("migrate", "--noinput", "-v", "0", env=stack.env)
    document = {
        "organization": ORGANIZATION,
        "signals": [
            {
                "slug": slug,
                "name": f"Fault {fault}",
                "type": "metric",
                "aggregation": "sum",
                "period": "day",
                "value_field": "value",
                "rate_limit_per_minute": 100_000_000,
                "schemas": [
                    {
                        "version": 1,
                        "schema": {
                            "type": "object",
                            "required": ["value"],
                            "properties": {"value": {"type": "number"}},
                        },
                    }
                ],
            }
            for fault, slug in SIGNALS.items()
        ],
    }
    manage("sync_signals", "-", env=stack.env, stdin=json.dumps(document))
    stack.api_key = manage(
        "create_api_key", "--organization", ORGANIZATION, "--name", "fault load", env=stack.env
    ).strip()
    with stack.db() as conn:
        row = conn.execute(
            "SELECT id FROM signals_app_organization WHERE slug = %s", [ORGANIZATION]
        ).fetchone()
        stack.organization_id = row[0]
        for fault, slug in SIGNALS.items():
            signal = conn.execute(
                "SELECT id FROM signals_app_signal WHERE organization_id = %s AND slug = %s",
                [stack.organization_id, slug],
            ).fetchone()
            stack.signal_ids[fault] = signal[0]


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    reason = missing_binaries()
    if reason is not None:
        pytest.fail(f"BIGMIND_REQUIRE_FAULT=1 but {reason}", pytrace=False)
    from django.conf import settings

    var_dir = Path(settings.VAR_DIR)
    logs = var_dir / "fault-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    shutil.rmtree(report_dir(var_dir), ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="bigmind-fault-"))
    root.chmod(0o755)  # the postgres user must reach its data directory inside
    (root / "prometheus").mkdir()
    postgres = PrivatePostgres(root / "pg")
    broker = PrivateRedis(root / "redis", "broker")
    cache = PrivateRedis(root / "redis", "cache")
    env = {
        **APP_ENV,
        "DATABASE_URL": postgres.url(DATABASE),
        # The cache (lookups, rate limits) and the broker on separate servers: the cache fault
        # freezes one without the other; the Redis fault stops both.
        "REDIS_URL": cache.url,
        "CACHE_URL": "",  # an inherited CACHE_URL would win over REDIS_URL
        "CELERY_BROKER_URL": broker.url,
        "BIGMIND_VAR_DIR": str(root / "var"),
        # Not one inherited from the caller's environment: it would mix this stack's metrics
        # files with another's.
        "PROMETHEUS_MULTIPROC_DIR": str(root / "prometheus"),
    }
    stack = FaultStack(
        root=root,
        logs=logs,
        var_dir=var_dir,
        postgres=postgres,
        broker=broker,
        cache=cache,
        env={**os.environ, **env},
    )
    started = time.monotonic()
    try:
        postgres.init()
        postgres.start()
        postgres.create_database(DATABASE)
        broker.start()
        cache.start()
        _seed(stack)
        stack.port = free_port()
        stack.gunicorn = gunicorn_start(
            env=stack.env, log=logs / "gunicorn.log", port=stack.port, workers=GUNICORN_WORKERS
        )
        for _ in range(CELERY_WORKERS):
            stack.workers.append(
                worker_start(env=stack.env, log_dir=logs, concurrency=1, queues=PIPELINE_QUEUES)
            )
        for worker in stack.workers:
            worker.wait_ready(timeout=90)
        stack.beat = beat_start(
            env=stack.env, log=logs / "beat.log", schedule=root / "celerybeat-schedule"
        )
        print(f"fault suite: stack up in {time.monotonic() - started:.1f} s (logs: {logs})")
        yield stack
    finally:
        workers_stop(stack.workers)
        for service in (stack.beat, stack.gunicorn):
            if service is not None:
                service.stop()
        broker.stop()
        cache.stop()
        # Kept with the other logs: the temporary directory goes.
        for log in (postgres.log, broker.log, cache.log):
            if log.exists():
                shutil.copy(log, logs / log.name)
        postgres.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(fault_stack: FaultStack) -> FaultStack:
    problems = fault_stack.problems()
    assert not problems, f"the stack is not healthy before this fault: {problems}"
    return fault_stack


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from django.conf import settings

    directory = report_dir(Path(settings.VAR_DIR))
    ran = {
        report.nodeid
        for kind in ("passed", "failed")
        for report in terminalreporter.stats.get(kind, [])
        if HERE.name in report.nodeid
    }
    if not ran or not directory.is_dir():
        return
    from tests.reliability.report import rows_read

    rows = rows_read(directory)
    if rows:
        terminalreporter.write_sep("=", "fault suite")
        terminalreporter.write_line(markdown_table(rows))
        if deliveries := webhook_table(rows):
            terminalreporter.write_line("")
            terminalreporter.write_line(deliveries)
        terminalreporter.write_line(f"(rows: {directory}; logs: {directory.parent / 'fault-logs'})")
