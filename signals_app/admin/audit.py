"""The audit log in the admin: read-only for everyone (no one adds, changes or deletes an entry,
superusers included), filterable, and cut to the staff user's organization like every
organization-owned admin (bigmind/admin_tenancy.py)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from bigmind.admin_tenancy import OrganizationScopedAdmin, admin_scope
from bigmind.display import datetime_display
from signals_app.admin.display import SIGNALS_ADMIN_CSS, clipped
from signals_app.models import AuditEntry


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@admin.register(AuditEntry)
class AuditEntryAdmin(OrganizationScopedAdmin):
    # The entry keeps the organization's id (it may have been deleted since), not a relation.
    organization_lookup = "organization_pk"
    list_display = (
        "when",
        "organization_slug",
        "action",
        "object_column",
        "actor_kind",
        "actor",
        "request_id",
    )
    list_display_links = ("when",)
    list_filter = (
        "organization_slug",
        "action",
        "actor_kind",
        ("at", admin.DateFieldListFilter),
    )
    search_fields = ("=object_id", "object_repr", "actor", "=request_id", "action")
    date_hierarchy = "at"
    # The page count needs no COUNT(*) over the whole log on every page.
    show_full_result_count = False
    fields = (
        "at",
        "organization_slug",
        "organization_pk",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "actor_kind",
        "actor",
        "changes_json",
        "request_id",
    )
    readonly_fields = fields

    class Media:
        css = SIGNALS_ADMIN_CSS

    @admin.display(description="Time", ordering="at")
    def when(self, obj: AuditEntry) -> str:
        return datetime_display(obj.at)

    @admin.display(description="Object", ordering="object_repr")
    def object_column(self, obj: AuditEntry) -> str:
        return clipped(obj.object_repr)

    @admin.display(description="Changed fields")
    def changes_json(self, obj: AuditEntry) -> str:
        # A row per field, old beside new, each value as compact JSON (null: none before, or
        # none after).
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            (
                (name, _json(pair[0] if len(pair) > 0 else None), _json(pair[-1] if pair else None))
                for name, pair in sorted(obj.changes.items())
            ),
        )
        if not rows:
            return "-"
        return format_html(
            '<table class="bigmind-audit-changes"><thead><tr><th>field</th><th>old</th>'
            "<th>new</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def get_list_filter(self, request: HttpRequest) -> Any:
        filters = super().get_list_filter(request)
        if admin_scope(request).everything:
            return filters
        # The slugs filter would list every organization in the log.
        return tuple(f for f in filters if f != "organization_slug")

    # The log is evidence: nobody writes it by hand, whatever their permissions.
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
