"""signals_app's SignalAdmin with the columns read from the events ("Events (24 h)", "Last
event"): the control plane imports nothing of the data plane, so they are added here and Signal
is registered with this class in that one's place (signals_app comes first in INSTALLED_APPS, so
its admin is loaded first)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.db.models import IntegerField, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone

from bigmind.display import datetime_display
from events_app.models import Event
from signals_app.admin.signal_admin import SignalAdmin
from signals_app.models import Signal

# Events in the last 24 h are counted up to this many: the list stays one bounded index scan
# per signal however busy a signal is.
RECENT_EVENTS_CAP = 10_000


class _CappedCount(Subquery):
    template = "(SELECT COUNT(*) FROM (%(subquery)s) AS capped)"


class SignalWithEventsAdmin(SignalAdmin):
    list_display = (
        "signal",
        "organization",
        "type",
        "latest_schema",
        "events_24h",
        "last_event",
        "active",
    )
    readonly_fields = (*SignalAdmin.readonly_fields, "events_24h", "last_event")
    activity_fields = (*SignalAdmin.activity_fields, "events_24h", "last_event")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Signal]:
        # Each column is a correlated subquery answered from the events' (signal,
        # received_at) index, never a join-and-group over the events table. Not filtered by
        # organization as well: that lets the planner walk event_org_received newest first
        # for a quiet signal, through all of a busy organization's events. Ordered as that
        # index is, so that even the capped count reads it rather than scanning the table.
        since = timezone.now() - timedelta(hours=24)
        events = Event.objects.filter(signal=OuterRef("pk")).order_by("-received_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                recent_event_count=_CappedCount(
                    events.filter(received_at__gte=since).values("pk")[: RECENT_EVENTS_CAP + 1],
                    output_field=IntegerField(),
                ),
                last_event_received_at=Subquery(events.values("received_at")[:1]),
            )
        )

    @admin.display(description="Events (24 h)")
    def events_24h(self, obj: Signal) -> str | None:
        count = getattr(obj, "recent_event_count", None)
        if count is None:
            return None
        return f"{RECENT_EVENTS_CAP:,}+" if count > RECENT_EVENTS_CAP else f"{count:,}"

    @admin.display(description="Last event", ordering="last_event_received_at")
    def last_event(self, obj: Signal) -> str | None:
        # Written here rather than left to Django: a read-only field shows a method's value
        # with str(), which for a datetime is 2026-12-02 20:00:36.339410+00:00.
        received_at = getattr(obj, "last_event_received_at", None)
        return datetime_display(received_at) if received_at else None


admin.site.unregister(Signal)
admin.site.register(Signal, SignalWithEventsAdmin)
