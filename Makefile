# Bigmind Signals. `make run` and `make test` are all a fresh machine with Python 3.11 needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Two installs: the runtime packages (requirements.txt) for `make run`, and on top of them the
# test and lint tools (requirements-dev.txt) for everything else. Each stamp is redone when its
# files change.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
# Python's bytecode cache, even where the environment turns it off (these machines set
# PYTHONDONTWRITEBYTECODE=1): without it every process compiles the project from source, and
# every pytest worker rewrites every test module's asserts again: 0.7 s more for each gunicorn,
# Celery or manage.py start, 6 s more for each collection. The caches are gitignored.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test install install-runtime lint migrate demo bench bench-compare bench-process bench-webhooks bench-governance bench-soak fault rehearse api-fuzz clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(RUNTIME_STAMP)

# requirements-dev.txt starts with `-r requirements.txt`: this installs the runtime too.
$(DEV_STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(DEV_STAMP) $(RUNTIME_STAMP)

install-runtime: $(RUNTIME_STAMP)

install: $(DEV_STAMP)

# Web server, Celery worker and Celery beat on the embedded defaults (SQLite, filesystem
# broker, SQLite cache); Ctrl-C stops them all. Environment variables (DATABASE_URL, REDIS_URL...) still apply.
# Only the runtime packages. `.env` gets what is missing of DJANGO_SECRET_KEY (generated once),
# DJANGO_DEBUG and LOG_FORMAT, for manage.py run by hand later (bigmind/local_env.py).
run: export DJANGO_DEBUG ?= true
run: export LOG_FORMAT ?= plain
run: install-runtime
	$(BIN)/python -m bigmind.local_env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_demo --base-url http://$(HOST):$(PORT)
	$(BIN)/python scripts/run_local.py --host $(HOST) --port $(PORT)

# The full suite. With nothing set it runs on SQLite and the embedded broker; CI sets
# DATABASE_URL, REDIS_URL and CELERY_BROKER_URL to prove the real stack. pytest-xdist runs it on
# two processes per core, at most 4 (each takes its own pair of Redis databases,
# tests/settings.py): much of the suite waits on the servers it starts (gunicorn, Celery, a
# private PostgreSQL, Chromium) rather than computing, so two per core keep the cores busy;
# docs/testing.md has the measurements. `loadgroup` keeps each `xdist_group` (the real-worker
# tests, the fault suite, a module with a module-scoped server) on one process. PYTEST_XDIST=
# (empty) runs it serially; PYTEST_ADDOPTS='-m "not slow"' leaves out the slow suites.
XDIST_PROCESSES := $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( 2 * n < 4 ? 2 * n : 4 )))
PYTEST_XDIST ?= -n $(XDIST_PROCESSES) --dist loadgroup
test: install
	$(BIN)/python scripts/pytest_strict.py $(PYTEST_XDIST)

lint: install
	$(BIN)/ruff check .
	DJANGO_SECRET_KEY=lint-only $(BIN)/mypy bigmind signals_app events_app
	$(BIN)/lint-imports

bench: install
	$(BIN)/python scripts/bench_ingest.py

# Ingest (single and batch) and processing (drains) of this checkout against BASELINE (main before
# issue #16) in one run, the sides taking turns, with the CPU and WAL per event of the capacity
# model (docs/scaling.md). About six minutes.
BASELINE ?= c50db10
bench-compare: install
	$(BIN)/python scripts/bench_compare.py --baseline $(BASELINE)

# Ingest with enforcement `flag` and one redaction rule against the same schema without them,
# and against plain ingest, in one run (docs/benchmarks.md, "Governance"). About four minutes.
bench-governance: install
	$(BIN)/python scripts/bench_ingest.py --endpoints ingest,ingest-plain,ingest-governed,ingest-flagged

# Celery workers: events/s per worker process draining a backlog (single-event and batch
# messages), and whether one worker per core keeps up with single-event ingest. About 10 minutes.
bench-process: install
	$(BIN)/python scripts/bench_process.py

# Processing with one webhook endpoint subscribed to everything against without, in one run.
bench-webhooks: install
	$(BIN)/python scripts/bench_webhooks.py

# Faults under load (tests/reliability, docs/reliability.md): a worker SIGKILLed, Redis and
# PostgreSQL restarted, the cache hung, each while 2,000 events are sent; on private servers it
# starts itself. Part of `make test` too; CI runs it once in its own step. About four minutes.
fault: install
	$(BIN)/python scripts/pytest_strict.py -m fault tests/reliability

# The cluster rehearsal (docs/rehearsal.md): PostgreSQL primary behind PgBouncer and a streaming
# replica, RabbitMQ, two web and two worker nodes behind a load balancer, all on this machine;
# 20,000 events sent, a web node and a worker node SIGKILLed mid-load and restarted, then every
# event checked. Private servers it starts itself. About four minutes.
rehearse: install
	$(BIN)/python scripts/rehearse.py

# Five minutes of single-event ingest at 80% of the measured maximum with a Celery worker
# running: errors, backlog and the RSS of web and worker processes. About seven minutes.
bench-soak: install
	$(BIN)/python scripts/bench_soak.py

# schemathesis against the live app (gunicorn, DEBUG off, demo data) and its own
# /v1/openapi.json: no 5xx, no answer the document does not describe. About three minutes.
# Uses DATABASE_URL / REDIS_URL... like the app (a missing PostgreSQL database is created).
api-fuzz: install
	$(BIN)/python scripts/api_fuzz.py

clean:
	rm -rf $(VENV) var
