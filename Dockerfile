# One image for every Bigmind Signals process: the release step, web (gunicorn), Celery workers
# and beat; the command picks which (docker-compose.yml, docs/deployment.md).
#   docker build -t bigmind-signals .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BIGMIND_VAR_DIR=/var/lib/bigmind

WORKDIR /app

# Runtime packages only: requirements.txt (pytest, schemathesis, Playwright and the linters are
# in requirements-dev.txt, not needed to serve). A layer of its own, so a code change does not
# reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY manage.py ./
COPY bigmind ./bigmind
COPY signals_app ./signals_app
COPY events_app ./events_app
COPY templates ./templates

# Not root. BIGMIND_VAR_DIR holds beat's schedule (a volume in docker-compose.yml); static files
# are served by WhiteNoise from the installed packages, so there is no collectstatic step.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app bigmind \
    && mkdir -p /var/lib/bigmind \
    && chown bigmind /var/lib/bigmind
USER bigmind

EXPOSE 8000
CMD ["gunicorn", "-c", "bigmind/gunicorn_conf.py", "bigmind.wsgi"]
