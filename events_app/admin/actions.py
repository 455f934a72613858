"""What the data plane's admin does besides showing rows: reprocess events, replay rejections,
and the notice of rejections that were only counted. Each calls one service and reports the
outcome to the user in messages; the rules live in the services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import ngettext

from bigmind.errors import ApplicationError
from events_app.admin.selectors import rejection_overflow_in_view
from events_app.ingest.replay import rejection_replay
from events_app.models import Event, RejectedEvent
from events_app.pipeline.reprocess import REPROCESSABLE, events_reprocess


@admin.action(description="Reprocess selected events (rollups are never counted twice)")
def reprocess(model_admin: Any, request: HttpRequest, queryset: QuerySet[Event]) -> None:
    # Same service as `manage.py reprocess_events`; events in progress are left alone.
    selected = queryset.count()  # before: reprocessing moves them out of a status filter
    queued = events_reprocess(events=queryset.filter(status__in=REPROCESSABLE))
    skipped = selected - queued
    message = ngettext(
        "%(count)d event queued for reprocessing.",
        "%(count)d events queued for reprocessing.",
        queued,
    ) % {"count": queued}
    if skipped:
        message += f" {skipped} skipped: being processed right now."
    model_admin.message_user(request, message, messages.SUCCESS if queued else messages.WARNING)


# permissions=["replay"]: the model admin's has_replay_permission decides who sees it.
@admin.action(description="Replay selected rejections", permissions=["replay"])
def replay(model_admin: Any, request: HttpRequest, queryset: QuerySet[RejectedEvent]) -> None:
    limit = model_admin.replay_max
    # Oldest first, so replayed events keep the order they were first sent in.
    selected = list(queryset.order_by("received_at", "id")[: limit + 1])
    if len(selected) > limit:
        model_admin.message_user(
            request,
            f"Only the oldest {limit} selected rejections were replayed.",
            messages.WARNING,
        )
        selected = selected[:limit]
    for rejection in selected:
        label = f"Rejection {rejection.id} ({rejection.signal_slug or '-'})"
        try:
            result = rejection_replay(rejection=rejection)
        except ApplicationError as exc:
            model_admin.message_user(
                request, f"{label}: not replayed: {exc.message}", messages.ERROR
            )
            continue
        if result.accepted:
            model_admin.message_user(
                request, f"{label}: accepted as event {result.event_id}.", messages.SUCCESS
            )
        else:
            assert result.error is not None
            model_admin.message_user(
                request,
                f"{label}: refused again ({result.error.code}): {result.error.message}",
                messages.WARNING,
            )


def rejection_overflow_notice(model_admin: Any, request: HttpRequest) -> None:
    """Above the rejection list: how many more rejections were only counted, not stored."""
    overflow = rejection_overflow_in_view(request)
    if overflow:
        model_admin.message_user(
            request,
            ngettext(
                "%(count)d more rejection within retention was over the per-minute cap "
                "and only counted, not stored.",
                "%(count)d more rejections within retention were over the per-minute cap "
                "and only counted, not stored.",
                overflow,
            )
            % {"count": overflow},
            messages.INFO,
        )
