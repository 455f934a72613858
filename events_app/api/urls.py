from __future__ import annotations

from django.urls import path, re_path

from bigmind.errors import handler404
from events_app.api.views import EventIngestApi

urlpatterns = [
    path("events", EventIngestApi.as_view(), name="event-ingest"),
    # --- write routes (batch, validate) above; read routes below ---
    # Unknown /v1 paths answer in the envelope even with DEBUG on (Django's debug 404 is HTML).
    re_path(r"^.*$", handler404),
]
