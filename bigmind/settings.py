"""The one settings module. Everything that differs between machines comes from the environment.

With no variable set, the service runs on one machine with no external server: SQLite for data,
a SQLite-file cache (shared by all local processes, atomic counters for rate limits) and
Celery's filesystem broker. Production sets DATABASE_URL, REDIS_URL (or CACHE_URL and
CELERY_BROKER_URL), DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from bigmind.idempotency_settings import key_retention_days
from bigmind.pgbouncer import database_pooling_apply
from bigmind.replica_settings import replica_settings

BASE_DIR = Path(__file__).resolve().parent.parent


class _Env(environ.Env):
    """django-environ, with a value that does not parse reported as ImproperlyConfigured naming
    its variable (manage.py prints it as one line) instead of a bare ValueError traceback."""

    def get_value(
        self,
        var: str,
        cast: Any = None,
        default: Any = environ.Env.NOTSET,
        parse_default: bool = False,
    ) -> Any:
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"{var} has an invalid value ({exc})") from exc


env = _Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)

# Local state of the embedded defaults (SQLite database, cache file, broker folders).
VAR_DIR = Path(env("BIGMIND_VAR_DIR", default="var"))
if not VAR_DIR.is_absolute():
    VAR_DIR = BASE_DIR / VAR_DIR
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off (production). Set it in the "
            "environment; on a development machine, `make run` once writes one to .env, which "
            "manage.py reads (README, 'Management commands')."
        )
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

# --- Security (production) ------------------------------------------------------------------
# docs/deployment.md: TLS ends at a proxy in front of gunicorn. With the variables it lists,
# `manage.py check --deploy --fail-level WARNING` passes (tests/bigmind/test_deploy_settings.py);
# that check is the release gate, and it also refuses a weak DJANGO_SECRET_KEY (security.W009:
# under 50 characters or under 5 distinct ones). Not enforced here, since local tools (mypy,
# api-fuzz, the benchmarks) import these settings with short throwaway keys.
# Keys that still verify signatures (sessions, password-reset links) while a new
# DJANGO_SECRET_KEY rolls out; drop them once what they signed has expired.
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
# The secret of redaction hashes (docs/governance.md "Redaction"); unset: DJANGO_SECRET_KEY.
BIGMIND_REDACTION_KEY = env("BIGMIND_REDACTION_KEY", default="")
# Session and CSRF cookies only over HTTPS whenever debug is off. Browsers also keep Secure
# cookies on http://localhost, so the browser tests and `make run` are unaffected.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
# HSTS: browsers hold the promise for the whole max-age, so it is switched on deliberately
# once HTTPS works for the host (and, with include-subdomains, for every subdomain). It is only
# sent on HTTPS responses.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
# Off by default: the test suite, the benchmarks and api-fuzz talk plain HTTP to a server with
# debug off. Health probes and the metrics scraper talk plain HTTP inside the network, so they
# are never redirected (patterns match the path without its leading slash).
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)/?$"]
# Only when every request reaches the app through a proxy that sets X-Forwarded-Proto itself
# (and drops a client's): Django then believes the header from any peer. Under gunicorn,
# FORWARDED_ALLOW_IPS (bigmind/gunicorn_conf.py) is the narrower way: it trusts the header only
# from the proxy's addresses.
if env.bool("DJANGO_TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Full origins (https://admin.example.com) allowed to POST admin forms besides the request's
# own host; needed when the admin is reached under another name than its Host header.
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# Django's page for the admin's forms, the envelope under /v1 (SPEC §2: never a CSRF refusal
# page there). Every /v1 view is exempt (DRF's, and bigmind.errors.handler404 for unknown
# paths): the API takes no cookie, so there is nothing to forge; this is for one that is not.
CSRF_FAILURE_VIEW = "bigmind.errors.csrf_failure"
# Django's defaults, stated so that a change is a visible decision.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    # django.contrib.admin, branded "Bigmind Signals" (bigmind/admin_site.py).
    "bigmind.admin_site.BigmindAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: runserver serves static files through WhiteNoise too, as gunicorn does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's JS/CSS, served by the app (no CDN)
    "django_ratelimit",
    "signals_app",
    "events_app",
]

MIDDLEWARE = [
    "bigmind.middleware.RequestIdMiddleware",
    # /healthz, /readyz and /metrics are answered here, before host validation, redirects,
    # sessions and authentication: probes come with an IP as Host (bigmind/health.py).
    "bigmind.health.ProbeMiddleware",
    # One JSON log line and the HTTP metrics per request; sees every answer below it.
    "bigmind.logs.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, the /v1/docs page's assets) without a separate web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Sessions, auth and messages: Django's, skipped for /v1/ (bigmind/middleware.py).
    "bigmind.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "bigmind.middleware.AuthenticationMiddleware",
    "bigmind.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "signals_app.audit.AuditActorMiddleware",  # who made a change, for the audit log
]

ROOT_URLCONF = "bigmind.urls"
WSGI_APPLICATION = "bigmind.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server read while the worker writes; IMMEDIATE takes the write lock
        # at BEGIN so two writers queue on `timeout` instead of failing with "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    # Persistent connections: the ingest path must not pay a TCP + auth handshake per request.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
    # Off: Django's health check is a `SELECT 1` before the first query of every request (7%
    # of an ingest worker's time, measured). Without it a connection the server dropped fails
    # its next query once (a 503 for that request) and is then replaced; the ingest writer
    # (events_app/ingest/group_commit.py), the workers and the key, signal and schema lookups
    # (bigmind.db.read_on_live_connection) retry on a new connection themselves.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool(
        "DATABASE_CONN_HEALTH_CHECKS", default=False
    )
# PgBouncer in transaction pooling (DATABASE_PGBOUNCER) and server-side prepared statements.
DATABASE_PGBOUNCER = database_pooling_apply(DATABASES["default"], env)
DATABASES, DATABASE_ROUTERS, BIGMIND_REPLICA_HEALTH = replica_settings(env, DATABASES)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (lookups and rate-limit counters) -------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")
# Short socket timeouts: when Redis is down a request must fail open quickly, not hang.
CACHE_SOCKET_TIMEOUT = env.float("CACHE_SOCKET_TIMEOUT", default=0.25)
# After a failed cache call, a process skips the cache for this long (bigmind/redis.py): a hung
# Redis then costs one time-out per process and window, not several per request. 0: off.
CACHE_CIRCUIT_BREAK_SECONDS = env.float("CACHE_CIRCUIT_BREAK_SECONDS", default=2.0)
if env("CACHE_URL", default=""):
    _default_cache = env.cache("CACHE_URL")
elif REDIS_URL:
    _default_cache = {"BACKEND": "bigmind.redis.RedisCache", "LOCATION": REDIS_URL}
else:
    _default_cache = {
        "BACKEND": "bigmind.cache.SQLiteCache",
        "LOCATION": str(VAR_DIR / "cache.sqlite3"),
    }
if _default_cache["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    _default_cache["BACKEND"] = "bigmind.redis.RedisCache"  # same, with the breaker and Lua incr
if _default_cache["BACKEND"] == "bigmind.redis.RedisCache":
    _default_cache.setdefault("OPTIONS", {}).update(
        socket_connect_timeout=CACHE_SOCKET_TIMEOUT,
        socket_timeout=CACHE_SOCKET_TIMEOUT,
        circuit_break_seconds=CACHE_CIRCUIT_BREAK_SECONDS,
    )
_default_cache.setdefault("KEY_PREFIX", env("CACHE_KEY_PREFIX", default="bigmind"))
# django-ratelimit's counters: the same store, through a backend that spends a unit in one
# round trip instead of add() + incr() (bigmind.cache.CounterCache); any other cache backend
# serves as it is.
_COUNTER_BACKENDS = {
    "bigmind.redis.RedisCache": "bigmind.redis.RateLimitCounterCache",
    "bigmind.cache.SQLiteCache": "bigmind.cache.SQLiteCounterCache",
}
_ratelimit_cache = {
    **_default_cache,
    "BACKEND": _COUNTER_BACKENDS.get(_default_cache["BACKEND"], _default_cache["BACKEND"]),
}
CACHES = {"default": _default_cache, "ratelimit": _ratelimit_cache}
# django-ratelimit counts in this cache with add()/incr(): atomic in Redis and in SQLiteCache.
RATELIMIT_USE_CACHE = "ratelimit"
# Our rate-limit service decides what an unreachable store means (accept and log); see
# events_app/ingest/ratelimits.py and the README.
RATELIMIT_FAIL_OPEN = True
SILENCED_SYSTEM_CHECKS = [
    # django-ratelimit only knows the built-in shared caches; SQLiteCache is shared and atomic.
    "django_ratelimit.E003",
    "django_ratelimit.W001",
]

# --- Celery ---------------------------------------------------------------------------------
_broker_dir = VAR_DIR / "broker"
for _sub in ("queue", "processed", "control"):
    (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The filesystem transport ignores the host, but kombu warns "No hostname was supplied"
    # at every connection of a URL without one (issue #12): name it.
    if CELERY_BROKER_URL.rstrip("/") == "filesystem:":
        CELERY_BROKER_URL = "filesystem://localhost/"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        # Unacked messages come back after this long if a worker vanished (Redis transport).
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    }
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A publish happens after the event is committed; if the broker is down we give up fast (the
# event stays `pending` in the database) instead of holding the HTTP request for long.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # nothing reads task results; state lives on the Event row
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=90)
CELERY_TASK_DEFAULT_QUEUE = "default"
# Every queue a RabbitMQ quorum queue (bigmind/queues.py says what Celery needs with them).
BIGMIND_QUORUM_QUEUES = env.bool("CELERY_QUORUM_QUEUES", default=False)
CELERY_TASK_ROUTES = {
    "events.process_event": {"queue": "events.process"},
    "events.process_events": {"queue": "events.process"},
    # Webhook sending waits on other people's servers: its own queue and workers,
    # so a slow receiver never holds a processing worker.
    "webhooks.deliver": {"queue": "webhooks"},
}
CELERY_TIMEZONE = "UTC"
# Celery's Django fixup closes the database connection after every task unless this is set:
# a new PostgreSQL connection (TCP, auth, backend start) per event was most of the
# single-event processing cost (docs/benchmarks.md, "Processing throughput"). Connections are
# kept; bigmind/celery.py still applies CONN_MAX_AGE and the health check around each task.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1_000_000)
# Off: worker processes commit to PostgreSQL without waiting for the WAL flush (safe because
# all they write can be redone from the stored event; bigmind/celery.py says why). Ingest and
# the admin always commit synchronously.
BIGMIND_WORKER_SYNCHRONOUS_COMMIT = env.bool("BIGMIND_WORKER_SYNCHRONOUS_COMMIT", default=False)
BIGMIND_SWEEP_INTERVAL_SECONDS = env.float("BIGMIND_SWEEP_INTERVAL_SECONDS", default=30.0)
# Rejected events (events_app/ingest/rejections.py, docs/operations.md "Rejected events"): how long
# they are kept and how often, and in what chunks, the purge deletes older ones.
BIGMIND_REJECTION_RETENTION_DAYS = env.int("BIGMIND_REJECTION_RETENTION_DAYS", default=14)
BIGMIND_REJECTION_PURGE_INTERVAL_SECONDS = env.float(
    "BIGMIND_REJECTION_PURGE_INTERVAL_SECONDS", default=3600.0
)
BIGMIND_REJECTION_PURGE_CHUNK_SIZE = env.int("BIGMIND_REJECTION_PURGE_CHUNK_SIZE", default=1000)
# Retention of events, metric buckets and the audit log (events_app/retention.py, docs/
# operations.md "Retention"); 0 keeps them forever. Failed events are kept at least as long as
# completed ones (the only copy of what could not be processed, kept for reprocessing).
BIGMIND_EVENT_RETENTION_DAYS = env.int("BIGMIND_EVENT_RETENTION_DAYS", default=90)
BIGMIND_FAILED_EVENT_RETENTION_DAYS = env.int("BIGMIND_FAILED_EVENT_RETENTION_DAYS", default=180)
BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS = key_retention_days(env, globals())  # at least the above
BIGMIND_METRIC_BUCKET_RETENTION_DAYS = env.int("BIGMIND_METRIC_BUCKET_RETENTION_DAYS", default=400)
BIGMIND_AUDIT_RETENTION_DAYS = env.int("BIGMIND_AUDIT_RETENTION_DAYS", default=400)
BIGMIND_RETENTION_INTERVAL_SECONDS = env.float("BIGMIND_RETENTION_INTERVAL_SECONDS", default=3600.0)
BIGMIND_RETENTION_CHUNK_SIZE = env.int("BIGMIND_RETENTION_CHUNK_SIZE", default=1000)
# Events table partitions on PostgreSQL (events_app/partitions, docs/operations.md "Partitions").
BIGMIND_EVENT_PARTITION_INTERVAL = env("BIGMIND_EVENT_PARTITION_INTERVAL", default="month")
BIGMIND_EVENT_PARTITIONS_AHEAD = env.int("BIGMIND_EVENT_PARTITIONS_AHEAD", default=3)
# Beat's entries, named after their tasks; a run that could not start in time is useless once
# the next one is due.
CELERY_BEAT_SCHEDULE = {
    t.replace(".", "-").replace("_", "-"): {"task": t, "schedule": s, "options": {"expires": s}}
    for t, s in [
        ("events.sweep", BIGMIND_SWEEP_INTERVAL_SECONDS),
        ("events.purge_rejections", BIGMIND_REJECTION_PURGE_INTERVAL_SECONDS),
        ("events.purge", BIGMIND_RETENTION_INTERVAL_SECONDS),
        ("events.partitions", 3600.0),
    ]
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Processing pipeline (events_app/pipeline) -----------------------------------------------
# "local" (deterministic, no network), "openai" (an OpenAI-compatible chat-completions
# endpoint), or the dotted path of a class implementing events_app.pipeline.processors.Processor.
BIGMIND_PROCESSOR = env("BIGMIND_PROCESSOR", default="local")
BIGMIND_AI_BASE_URL = env("BIGMIND_AI_BASE_URL", default="https://api.openai.com/v1")
BIGMIND_AI_API_KEY = env("BIGMIND_AI_API_KEY", default="")
BIGMIND_AI_MODEL = env("BIGMIND_AI_MODEL", default="gpt-4o-mini")
BIGMIND_AI_TIMEOUT_SECONDS = env.float("BIGMIND_AI_TIMEOUT_SECONDS", default=20.0)
# Tries per event (the first included) before it is `failed`; transient errors only.
BIGMIND_PROCESSING_MAX_ATTEMPTS = env.int("BIGMIND_PROCESSING_MAX_ATTEMPTS", default=5)
# Outbound webhooks (docs/webhooks.md): `http://` and loopback or private addresses allowed, for
# development and tests only; production sends to public `https://` addresses alone.
BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = env.bool(
    "BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS", default=False
)
# Sends in flight to one endpoint at most: a slow receiver holds this many webhook workers, never
# all of them (run the `webhooks` worker with more processes than this).
BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT = env.int(
    "BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", default=4
)
# A claim older than this is a sender that died mid-send: the delivery is sent again. Longer
# than any attempt (10 s) can take.
BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS = env.float("BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS", default=60.0)
# Retry n of a delivery waits between half and all of min(max, base * 2^(n-1)); retries stop
# RETRY_FOR after the delivery was written (about 3 days: 19 attempts with these defaults).
BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS = env.float(
    "BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS", default=30.0
)
BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = env.float(
    "BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS", default=6 * 3600.0
)
BIGMIND_WEBHOOK_RETRY_FOR_SECONDS = env.float(
    "BIGMIND_WEBHOOK_RETRY_FOR_SECONDS", default=3 * 86400.0
)
# An endpoint whose every delivery failed for this long is disabled, with the reason.
BIGMIND_WEBHOOK_DISABLE_AFTER_SECONDS = env.float(
    "BIGMIND_WEBHOOK_DISABLE_AFTER_SECONDS", default=3 * 86400.0
)
# Finished deliveries (succeeded or failed) are kept this long, then purged with the events'
# retention; 0 keeps them forever.
BIGMIND_WEBHOOK_DELIVERY_RETENTION_DAYS = env.int(
    "BIGMIND_WEBHOOK_DELIVERY_RETENTION_DAYS", default=30
)
# Retry n waits between half and all of min(max, base * 2^(n-1)) ("equal jitter").
BIGMIND_RETRY_BACKOFF_SECONDS = env.float("BIGMIND_RETRY_BACKOFF_SECONDS", default=2.0)
BIGMIND_RETRY_BACKOFF_MAX_SECONDS = env.float("BIGMIND_RETRY_BACKOFF_MAX_SECONDS", default=300.0)
# The sweep queues a `pending` event again once it has waited this long without being claimed
# (its publish was lost, or the broker was down at commit) ...
BIGMIND_SWEEP_PENDING_AFTER_SECONDS = env.float(
    "BIGMIND_SWEEP_PENDING_AFTER_SECONDS", default=120.0
)
# ... and returns a `processing` event to `pending` once its claim is older than the task's hard
# time limit plus this margin (its worker died without finishing).
BIGMIND_SWEEP_STUCK_MARGIN_SECONDS = env.float("BIGMIND_SWEEP_STUCK_MARGIN_SECONDS", default=30.0)
BIGMIND_SWEEP_BATCH_SIZE = env.int("BIGMIND_SWEEP_BATCH_SIZE", default=500)
# Chunks: a worker claims, plans and commits this many events at a time, in a few set-based
# statements (events_app/pipeline/processing.py; 200 measured in docs/benchmarks.md). Draining:
# a worker that takes a single-event message then claims other due pending events, oldest
# first, a chunk at a time (PostgreSQL: FOR UPDATE SKIP LOCKED, so workers never wait on each
# other's rows), until none is left or BIGMIND_DRAIN_SECONDS have passed; the messages of
# events already drained become cheap no-ops. 0 turns draining off (one event per message).
BIGMIND_DRAIN_CHUNK_SIZE = env.int("BIGMIND_DRAIN_CHUNK_SIZE", default=200)
BIGMIND_DRAIN_SECONDS = env.float("BIGMIND_DRAIN_SECONDS", default=5.0)
# Coalesced wake-ups (events_app/pipeline/queue.py): while a single-event message is queued and
# not started, ingest publishes no other; the flag expires after this long (a lost message).
# 0: a message per event, as without draining.
BIGMIND_WAKEUP_TTL_SECONDS = env.float("BIGMIND_WAKEUP_TTL_SECONDS", default=30.0)
# Engagement score: each event's weight halves every this many days.
BIGMIND_ENGAGEMENT_HALF_LIFE_DAYS = env.float("BIGMIND_ENGAGEMENT_HALF_LIFE_DAYS", default=14.0)

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["events_app.ingest.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": [],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "bigmind.negotiation.JsonOnlyNegotiation",
    "EXCEPTION_HANDLER": "bigmind.errors.exception_handler",
    # OPTIONS answers in the envelope too (events_app/api/metadata.py).
    "DEFAULT_METADATA_CLASS": "events_app.api.metadata.EnvelopeMetadata",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

# The OpenAPI document (/v1/openapi.json) and the docs page (/v1/docs); the shapes are the
# serializers of the resource modules in events_app/api/, the shared pieces api/schema.py.
SPECTACULAR_SETTINGS = {
    "TITLE": "Bigmind Signals API",
    "VERSION": "1.0.0",
    "DESCRIPTION": (
        "Send signal events about your customers, follow each one to its outcome, and read "
        "your signals, their JSON Schemas and CRM record profiles. Every answer is JSON in an "
        'envelope: `{"success": true, "data": ...}` or `{"success": false, "error": "...", '
        '"code": "..."}`. Authenticate with `Authorization: Bearer sk_...`. The prose '
        "reference is docs/api.md."
    ),
    "TAGS": [
        {"name": "events", "description": "Send, check and read events."},
        {"name": "signals", "description": "Signals and their JSON Schemas."},
        {"name": "records", "description": "CRM record profiles."},
        {"name": "webhooks", "description": "Webhook endpoints and their deliveries."},
    ],
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PUBLIC": True,
    "SERVE_AUTHENTICATION": [],  # the document and the docs page need no API key
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # validatorUrl null: Swagger UI would otherwise send the document to an outside validator.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "POSTPROCESSING_HOOKS": ["events_app.api.schema.postprocess"],
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,  # the fields' help texts say what values mean
}

# Group commit (events_app/ingest/group_commit.py, docs/architecture.md): each web process has one
# writer thread that stores the single events its request threads hand it, up to MAX_ROWS in
# one statement and commit; with fewer waiting it waits up to MAX_WAIT_MS for more (0: only
# what queued while the previous group committed). A request waits at most TIMEOUT_SECONDS for
# its commit, then answers 503. Off: each request stores its own event.
BIGMIND_GROUP_COMMIT = env.bool("BIGMIND_GROUP_COMMIT", default=True)
BIGMIND_GROUP_COMMIT_MAX_ROWS = env.int("BIGMIND_GROUP_COMMIT_MAX_ROWS", default=128)
BIGMIND_GROUP_COMMIT_MAX_WAIT_MS = env.float("BIGMIND_GROUP_COMMIT_MAX_WAIT_MS", default=0.0)
BIGMIND_GROUP_COMMIT_TIMEOUT_SECONDS = env.float(
    "BIGMIND_GROUP_COMMIT_TIMEOUT_SECONDS", default=20.0
)
# Largest accepted body of POST /v1/events; larger bodies get 413 without being read.
BIGMIND_EVENT_MAX_BODY_BYTES = env.int("BIGMIND_EVENT_MAX_BODY_BYTES", default=1024 * 1024)
# Largest accepted body of POST /v1/events/batch (each item must also fit the event limit).
BIGMIND_BATCH_MAX_BODY_BYTES = env.int("BIGMIND_BATCH_MAX_BODY_BYTES", default=5 * 1024 * 1024)
BIGMIND_BATCH_MAX_EVENTS = 100
# Django refuses larger bodies itself; keep it above every endpoint's own limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(BIGMIND_EVENT_MAX_BODY_BYTES, BIGMIND_BATCH_MAX_BODY_BYTES) + 1024
# Deepest nesting of JSON accepted in a request body (objects and arrays).
BIGMIND_JSON_MAX_DEPTH = env.int("BIGMIND_JSON_MAX_DEPTH", default=32)
# Rejected events: the stored body is cut to this many bytes (at a UTF-8 boundary; a cut body
# cannot be replayed), and at most this many are stored per organization and minute (the
# rest are counted only). Retention: BIGMIND_REJECTION_RETENTION_DAYS above.
BIGMIND_REJECTION_BODY_MAX_BYTES = env.int("BIGMIND_REJECTION_BODY_MAX_BYTES", default=16 * 1024)
BIGMIND_REJECTIONS_PER_MINUTE = env.int("BIGMIND_REJECTIONS_PER_MINUTE", default=60)
# Per-minute budgets by signal type, unless the signal sets its own.
BIGMIND_RATE_LIMITS = {
    "event": env.int("BIGMIND_RATE_LIMIT_EVENT", default=100),
    "metric": env.int("BIGMIND_RATE_LIMIT_METRIC", default=1000),
    "state": env.int("BIGMIND_RATE_LIMIT_STATE", default=30),
}
# Units of a signal's per-minute budget a web process takes from the shared counter at once
# (bigmind.cache.CounterCache): at most 1/1000 of the budget and at most this many. 1: every
# request is counted in the store.
BIGMIND_RATE_LIMIT_LEASE_MAX = env.int("BIGMIND_RATE_LIMIT_LEASE_MAX", default=64)
# How long key and signal lookups stay cached; every change through the services
# invalidates them at once, this is only the safety net for writes that bypass them.
BIGMIND_LOOKUP_CACHE_SECONDS = env.int("BIGMIND_LOOKUP_CACHE_SECONDS", default=300)
# Process-local level in front of that cache (bigmind.cache.LookupCache): a change made in
# another process is seen here within this many seconds. 0 turns the local level off.
BIGMIND_LOCAL_CACHE_SECONDS = env.float("BIGMIND_LOCAL_CACHE_SECONDS", default=2.0)
# Adds the bare baseline view at /bench/bare (bigmind/bench.py) for scripts/bench_ingest.py.
BIGMIND_BENCHMARK_ENDPOINTS = env.bool("BIGMIND_BENCHMARK_ENDPOINTS", default=False)
# Backpressure (events_app/ingest/backpressure.py, docs/operations.md "Backpressure"): ingest
# answers 503 `overloaded` while more events than this are pending; 0 (the default) turns it
# off. The backlog is counted at most once per REFRESH_SECONDS across all processes.
BIGMIND_BACKPRESSURE_MAX_PENDING = env.int("BIGMIND_BACKPRESSURE_MAX_PENDING", default=0)
BIGMIND_BACKPRESSURE_REFRESH_SECONDS = env.int("BIGMIND_BACKPRESSURE_REFRESH_SECONDS", default=5)
BIGMIND_BACKPRESSURE_RETRY_AFTER_SECONDS = env.int(
    "BIGMIND_BACKPRESSURE_RETRY_AFTER_SECONDS", default=30
)

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# Admin tenancy (bigmind/admin_tenancy.py): the organizations, and the model limiting a staff
# user to one. Named here, as AUTH_USER_MODEL names the user model, so the kernel imports no app.
BIGMIND_ADMIN_TENANT_MODEL = "signals_app.Organization"
BIGMIND_ADMIN_MEMBERSHIP_MODEL = "signals_app.OrganizationMembership"
LANGUAGE_CODE = "en-us"
# One date style in the admin: "2026-12-02 20:00:36 UTC" (bigmind/formats/en/formats.py).
FORMAT_MODULE_PATH = ["bigmind.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns at start-up when it is missing
# WhiteNoise finds the apps' static files itself (scanned once at start-up), so no
# collectstatic step is needed for the docs page and the admin to work with DEBUG off.
WHITENOISE_USE_FINDERS = True

# --- Observability (docs/operations.md: "Health checks", "Metrics", "Logs") --------------------
# Each /readyz check (database, cache, broker; run at once) gets this long before it counts
# as failed.
BIGMIND_READYZ_TIMEOUT_SECONDS = env.float("BIGMIND_READYZ_TIMEOUT_SECONDS", default=1.0)
# A process answers /readyz from its last checks for this long (0: checks on every probe).
BIGMIND_READYZ_CACHE_SECONDS = env.float("BIGMIND_READYZ_CACHE_SECONDS", default=1.0)
# /metrics answers a client from these networks (its address and every address a proxy
# forwarded for), or one sending `Authorization: Bearer <BIGMIND_METRICS_TOKEN>`; anyone else
# gets 403. The default is this machine only; an empty list leaves only the token.
BIGMIND_METRICS_TOKEN = env("BIGMIND_METRICS_TOKEN", default="")
BIGMIND_METRICS_ALLOWED_NETWORKS = env.list(
    "BIGMIND_METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"]
)
for _network in BIGMIND_METRICS_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"BIGMIND_METRICS_ALLOWED_NETWORKS: {_exc}") from _exc
# The backlog gauge counts pending (and processing) events up to this many at each scrape.
BIGMIND_METRICS_BACKLOG_CAP = env.int("BIGMIND_METRICS_BACKLOG_CAP", default=100_000)
# A Celery worker's main process serves its (and its pool's) metrics on this port; 0: off.
# Prefork pools need PROMETHEUS_MULTIPROC_DIR (one empty directory per worker).
BIGMIND_WORKER_METRICS_PORT = env.int("BIGMIND_WORKER_METRICS_PORT", default=0)
BIGMIND_WORKER_METRICS_ADDR = env("BIGMIND_WORKER_METRICS_ADDR", default="127.0.0.1")
# "json" (one JSON object per line, the default) or "plain" (text for humans, `make run`).
LOG_FORMAT = env("LOG_FORMAT", default="json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured("LOG_FORMAT must be json or plain")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "bigmind.logs.ContextFilter"},
        "server_request_lines": {"()": "bigmind.logs.ServerRequestLineFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "bigmind.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Our request line (bigmind.request) reports every answer; Django's own only 5xx.
        "django.request": {"level": "ERROR"},
        # Django's default handlers print plain text past our formatter and e-mail ADMINS
        # reports that include the request's POST data: everything goes through ours instead.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        # runserver's own request line would repeat ours (bigmind.logs.ServerRequestLineFilter).
        "django.server": {
            "handlers": [],
            "level": "INFO",
            "propagate": True,
            "filters": ["server_request_lines"],
        },
        # Never the SQL with its parameters (payloads, key hashes), even with LOG_LEVEL=DEBUG.
        "django.db.backends": {"level": "INFO"},
        # A Host outside DJANGO_ALLOWED_HOSTS is the client's 400 (`invalid_host`, on our request
        # line); Django also logs it at ERROR with a whole traceback, once per probe or scanner.
        "django.security.DisallowedHost": {"handlers": [], "level": "CRITICAL", "propagate": False},
        # The openai SDK's HTTP library logs every request at INFO, URL included; the task's own
        # line already says what the processor did.
        "httpx2": {"level": "WARNING"},
    },
}
