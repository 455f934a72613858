from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from events_app.models import CrmRecord, Event, Insight, MetricAggregate, RecordState
from events_app.pipeline.reprocess import REPROCESSABLE, events_reprocess


class ReadOnlyAdmin(admin.ModelAdmin):
    # The data plane is written by the API and the workers only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "signal",
        "identity_type",
        "identity_id",
        "status",
        "received_at",
        "reference",
    )
    list_filter = ("status", "signal__type", "organization", "received_at")
    search_fields = ("=id", "=reference", "=identity_id", "=idempotency_key")
    list_select_related = ("signal", "signal__organization")
    date_hierarchy = "received_at"
    # No COUNT(*) over the whole table on every list page.
    show_full_result_count = False
    raw_id_fields = ("crm_record",)
    actions = ("reprocess",)

    @admin.action(description="Reprocess selected events (rollups are never counted twice)")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        # Same service as `manage.py reprocess_events`; events in progress are left alone.
        selected = queryset.count()  # before: reprocessing moves them out of a status filter
        queued = events_reprocess(events=queryset.filter(status__in=REPROCESSABLE))
        skipped = selected - queued
        message = f"{queued} event(s) queued for reprocessing."
        if skipped:
            message += f" {skipped} skipped: being processed right now."
        self.message_user(request, message, messages.SUCCESS if queued else messages.WARNING)


@admin.register(CrmRecord)
class CrmRecordAdmin(ReadOnlyAdmin):
    list_display = ("type", "external_id", "organization", "first_seen_at", "last_seen_at")
    list_filter = ("type", "organization")
    search_fields = ("=external_id",)
    show_full_result_count = False


@admin.register(Insight)
class InsightAdmin(ReadOnlyAdmin):
    list_display = ("summary", "score", "kind", "signal", "crm_record", "occurred_at", "processor")
    list_filter = ("kind", "signal__type", "organization")
    list_select_related = ("signal", "crm_record")
    search_fields = ("=event_id",)
    raw_id_fields = ("crm_record",)
    show_full_result_count = False


@admin.register(MetricAggregate)
class MetricAggregateAdmin(ReadOnlyAdmin):
    list_display = ("crm_record", "signal", "period", "bucket_start", "count", "sum", "min", "max")
    list_filter = ("period",)
    list_select_related = ("signal", "crm_record")
    raw_id_fields = ("crm_record",)
    show_full_result_count = False


@admin.register(RecordState)
class RecordStateAdmin(ReadOnlyAdmin):
    list_display = ("crm_record", "signal", "value", "timestamp", "updated_at")
    list_select_related = ("signal", "crm_record")
    raw_id_fields = ("crm_record",)
    show_full_result_count = False
