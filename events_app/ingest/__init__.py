"""Ingest: from an authenticated request to a committed event (SPEC section 2).

- auth.py: API-key authentication (DRF authenticator) and the request's tenant.
- validation.py: the fast body check of POST /v1/events and JSON Schema validation.
- ratelimits.py, backpressure.py: the per-signal budget and the pending-backlog gate.
- store.py, group_commit.py: writing events (one statement per request group) and replays.
- services.py, batch.py: single-event and batch ingest, the use cases the API calls.
- rejections.py: recording refused events and replaying them after a fix.

Nothing here imports the API, the admin or Celery tasks; it publishes work through
`events_app.pipeline.queue` by task name.
"""
