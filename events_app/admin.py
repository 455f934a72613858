from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from events_app.models import CrmRecord, Event


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


@admin.register(CrmRecord)
class CrmRecordAdmin(ReadOnlyAdmin):
    list_display = ("type", "external_id", "organization", "first_seen_at", "last_seen_at")
    list_filter = ("type", "organization")
    search_fields = ("=external_id",)
    show_full_result_count = False
