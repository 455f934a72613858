"""The read replicas' settings (docs/replicas.md): DATABASE_REPLICA_URLS made into database
aliases `replica_0`, `replica_1`... beside `default`, the router that uses them, and how their
health is judged. bigmind/settings.py calls `replica_settings` once, after it has set up
`default`.

Imported by the settings module: nothing here may import Django's database layer or an app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

REPLICA_ALIAS_PREFIX = "replica_"
ROUTER = "bigmind.replicas.ReplicaRouter"
# libpq's own floor: a connect_timeout of 1 is taken as 2 seconds.
_CONNECT_TIMEOUT_MIN = 2
# What names a server (taken from the replica's URL); everything else is the primary's.
_IDENTITY = ("NAME", "USER", "PASSWORD", "HOST", "PORT")


@dataclass(frozen=True)
class ReplicaHealth:
    """How a web process judges its replicas (bigmind/replicas.py)."""

    # A replica further behind the primary than this is skipped.
    max_lag_seconds: float
    # How long a verdict (healthy, lagging) is reused before the replica is checked again.
    check_seconds: float
    # A replica found down is tried again after a back-off doubling from `check_seconds` up to
    # this.
    retry_max_seconds: float


def replica_database(url: str, primary: dict[str, Any], *, connect_timeout: int) -> dict[str, Any]:
    """One replica's DATABASES entry: the primary's treatment (persistent connections, health
    checks, prepared statements, any other option) with the replica's server, and a short
    connect timeout unless its URL gives one, so that a replica that is down costs a request
    seconds, not the kernel's TCP time-out."""
    config = environ.Env.db_url_config(url)
    if config.get("ENGINE") != primary.get("ENGINE"):
        raise ImproperlyConfigured(
            "DATABASE_REPLICA_URLS must name servers of the same kind as DATABASE_URL "
            "(PostgreSQL streaming replicas of its primary)"
        )
    database = {key: value for key, value in primary.items() if key not in _IDENTITY}
    database.update({key: config[key] for key in _IDENTITY if key in config})
    options = {**primary.get("OPTIONS", {}), **config.get("OPTIONS", {})}
    options.setdefault("connect_timeout", connect_timeout)
    database["OPTIONS"] = options
    # A replica is the primary's data: the test run makes no database of its own for it.
    database["TEST"] = {"MIRROR": "default"}
    return database


def replica_settings(
    env: environ.Env, databases: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[str], ReplicaHealth]:
    """(DATABASES with the replicas added, DATABASE_ROUTERS, BIGMIND_REPLICA_HEALTH)."""
    urls = [url.strip() for url in env.list("DATABASE_REPLICA_URLS", default=[]) if url.strip()]
    primary = databases["default"]
    if urls and "postgresql" not in str(primary.get("ENGINE", "")):
        raise ImproperlyConfigured(
            "DATABASE_REPLICA_URLS needs DATABASE_URL to be PostgreSQL: SQLite has no replicas"
        )
    connect_timeout = max(
        _CONNECT_TIMEOUT_MIN, env.int("DATABASE_REPLICA_CONNECT_TIMEOUT", default=2)
    )
    replicas = {
        f"{REPLICA_ALIAS_PREFIX}{index}": replica_database(
            url, primary, connect_timeout=connect_timeout
        )
        for index, url in enumerate(urls)
    }
    health = ReplicaHealth(
        max_lag_seconds=env.float("BIGMIND_REPLICA_MAX_LAG_SECONDS", default=5.0),
        check_seconds=env.float("BIGMIND_REPLICA_CHECK_SECONDS", default=1.0),
        retry_max_seconds=env.float("BIGMIND_REPLICA_RETRY_MAX_SECONDS", default=30.0),
    )
    if health.max_lag_seconds <= 0 or health.check_seconds <= 0 or health.retry_max_seconds <= 0:
        raise ImproperlyConfigured(
            "BIGMIND_REPLICA_MAX_LAG_SECONDS, BIGMIND_REPLICA_CHECK_SECONDS and "
            "BIGMIND_REPLICA_RETRY_MAX_SECONDS must be positive"
        )
    # Without replicas no router: every query keeps Django's own routing, at no cost.
    return {**databases, **replicas}, [ROUTER] if replicas else [], health
