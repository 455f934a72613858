"""gunicorn's configuration for production: `gunicorn -c bigmind/gunicorn_conf.py bigmind.wsgi`.

Every value comes from the environment, with the default beside it; docs/deployment.md lists
them. `make run` (scripts/run_local.py) and the benchmarks (scripts/bench_ingest.py) load this
file too, so what is measured is what is deployed.

Worker class: threaded (`gthread`: bigmind/gunicorn_worker.py's variant with a read deadline),
WEB_CONCURRENCY processes of GUNICORN_THREADS threads. Threads are what group commit needs
(events_app/ingest/group_commit.py): a process's writer stores the events of all its request threads
that arrive while it commits, in one statement and one WAL flush; a sync worker serves one
request at a time, so every event would be a commit of its own. Processes still use every core
(the ingest path is Python CPU between round trips, and threads of one process share the GIL).
docs/benchmarks.md measures the defaults against sync workers and other shapes.
Each thread that reads the database holds its own persistent connection (CONN_MAX_AGE), and
each process's writer one more; gunicorn's `timeout` cannot kill a hung request thread (a
gthread worker's heartbeat comes from its main thread), which is why requests also have a read
deadline and the writer a commit time-out. Keep-alive connections from the proxy are served
without a new connection per request. GUNICORN_THREADS=1 switches to sync workers.
"""

from __future__ import annotations

import os
from typing import Any


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in {"1", "true", "yes", "on"}


def _cores() -> int:
    # The CPUs this process may run on (a container's cpuset), not the host's count. A CFS quota
    # (`docker run --cpus`) is not visible here: set WEB_CONCURRENCY then.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Only the proxy, or the machine's private network, should reach this address.
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Measured on 2 cores (docs/benchmarks.md); each thread that reads the database and each
# process's ingest writer hold a PostgreSQL connection (CONN_MAX_AGE), so
# workers x (threads + 1) x web machines + Celery concurrency must stay under max_connections.
workers = _int("WEB_CONCURRENCY", _cores() + 1)
threads = _int("GUNICORN_THREADS", 8)
# gunicorn's own workers put no deadline on reading a request: a client trickling its headers or
# body holds a sync worker until `timeout` aborts it (a 500 to that client), or a gthread thread
# for as long as it trickles (docs/fuzzing.md, "Slow clients"). These subclasses give every
# request a read deadline, BIGMIND_REQUEST_READ_TIMEOUT (20 s, below `timeout`).
worker_class = os.environ.get(
    "GUNICORN_WORKER_CLASS",
    "bigmind.gunicorn_worker.ReadDeadlineThreadWorker"
    if threads > 1
    else "bigmind.gunicorn_worker.ReadDeadlineSyncWorker",
)
# gunicorn 25+ opens a control socket at one fixed path per user (~/.gunicorn/gunicorn.ctl), so
# two servers on one machine (a deploy's old and new, tests) would contend for it; nothing here
# uses it.
control_socket_disable = _bool("GUNICORN_CONTROL_SOCKET_DISABLE", True)
# A request of this API takes milliseconds; 30 s only catches a stuck worker.
timeout = _int("GUNICORN_TIMEOUT", 30)
# On SIGTERM (a deploy, `docker stop`), requests in flight get this long to finish. The
# container's stop grace period must be longer (docker-compose.yml: 35 s).
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
# Seconds an idle keep-alive connection stays open (gthread only: sync workers close after each
# response). Longer than the proxy's idle timeout for upstream connections (nginx: 60 s), so
# that the proxy closes them, and never reuses one gunicorn has just closed (a 502).
keepalive = _int("GUNICORN_KEEPALIVE", 75)
# Recycle a worker after this many requests (plus up to the jitter, so that they do not all
# restart at once): a bound on any slow leak in the app or a library (the soak measures RSS
# flat). A restart costs a second of CPU and the process's warm caches: at 1,000 requests/s a
# process would restart every 10 s with 10,000. 0 turns it off.
max_requests = _int("GUNICORN_MAX_REQUESTS", 100_000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 10_000)
# gunicorn's default (4094) answers longer request lines itself with an HTML 414 outside the
# API's JSON envelope; GET /v1/events with many filters needs more. 8190 is gunicorn's maximum.
limit_request_line = _int("GUNICORN_LIMIT_REQUEST_LINE", 8190)
# Peers allowed to set X-Forwarded-Proto (then wsgi.url_scheme is https and Django sees the
# request as secure): the TLS proxy's addresses or networks, or `*` when nothing but the proxy
# can reach gunicorn. gunicorn's own default and variable name.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Not preloaded: nothing big is shared, a worker opens its own database, cache and broker
# connections after the fork, and `kill -HUP` on the master loads new code.
preload_app = _bool("GUNICORN_PRELOAD", False)
# The app logs each request itself (one JSON line, with the request id); gunicorn's access log
# would only repeat it. GUNICORN_ACCESS_LOG=- turns it on (to stdout).
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "bigmind-web"
# The workers' heartbeat files: on a disk that stalls (a container's overlay filesystem), a
# busy worker could look dead and be killed. /dev/shm is memory.
if os.path.isdir("/dev/shm"):  # noqa: S108
    worker_tmp_dir = "/dev/shm"  # noqa: S108


def on_starting(server: Any) -> None:
    """Empty the Prometheus multiprocess directory before any worker writes to it (files of an
    earlier run would be added to this one's). bigmind/metrics.py does the emptying; importing
    it needs the directory to exist, since prometheus_client opens its files at import."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    from bigmind.metrics import gunicorn_on_starting

    gunicorn_on_starting(server)


def child_exit(server: Any, worker: Any) -> None:
    """Tell the Prometheus multiprocess collector that a worker is gone (bigmind/metrics.py).

    Only in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set): without it the master never
    imports the metrics, and there is nothing to clean up.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from bigmind.metrics import gunicorn_child_exit

    gunicorn_child_exit(server, worker)
