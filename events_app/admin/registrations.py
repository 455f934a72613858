"""The data plane's model admins: events, CRM records, insights, aggregates, states and
rejections, read-only and scoped to the user's organization."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from bigmind.admin_tenancy import OrganizationScopedAdmin
from bigmind.display import datetime_display, short_id
from events_app.admin.actions import rejection_overflow_notice, replay, reprocess
from events_app.admin.display import (
    IdReceivedColumns,
    RecordSignalColumns,
    SignalColumn,
    bucket_value,
    compact_json,
    cut_cell,
    json_field,
    number_text,
    pretty_json,
    record_profile_context,
    time_field,
)
from events_app.admin.selectors import SignalListFilter, SignalSlugFilter
from events_app.models import (
    CrmRecord,
    Event,
    Insight,
    MetricAggregate,
    RecordState,
    RejectedEvent,
)
from events_app.selectors import crm_record_profile


class ReadOnlyAdmin(admin.ModelAdmin):
    # The data plane is written by the API and the workers only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DataAdmin(OrganizationScopedAdmin, ReadOnlyAdmin):
    """The data plane's lists and pages: scoped to the user's organization, read-only, laid out
    by events_app/admin.css (list widths, readable names in both themes)."""

    class Media:
        css = {"all": ("events_app/admin.css",)}


# Past this many, an event's page shows the latest steps only (a reprocessed-in-a-loop event
# must not make its page unbounded).
STATUS_HISTORY_LIMIT = 200


@admin.register(Event)
class EventAdmin(IdReceivedColumns, SignalColumn, DataAdmin):
    # identity_type and identity_id are one column (the record); attempts go with the status.
    list_display = (
        "ref_id",
        "when_received",
        "signal_column",
        "identity_column",
        "tag_status",
        "icon_schema_valid",
        "reference_column",
    )
    list_display_links = ("ref_id",)
    list_filter = (
        "status",
        "schema_valid",
        SignalListFilter,
        "signal__type",
        "organization",
        "received_at",
    )
    search_fields = ("=id", "=reference", "=identity_id", "=idempotency_key")
    list_select_related = ("signal", "signal__organization")
    date_hierarchy = "received_at"
    # No COUNT(*) over the whole table on every list page.
    show_full_result_count = False
    raw_id_fields = ("crm_record",)
    actions = (reprocess,)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "organization",
                    "signal",
                    "schema_version",
                    "schema_check",
                    "identity",
                    "reference",
                    "idempotency_key",
                )
            },
        ),
        ("Status", {"fields": ("status", "attempts", "error", "status_history")}),
        (
            "Times (UTC)",
            {"fields": ("occurred", "received", "claimed", "due", "processed")},
        ),
        ("Payload", {"fields": ("payload",)}),
        ("Processing result", {"fields": ("processing_result", "rollup_applied")}),
    )
    readonly_fields = (
        "id",
        "organization",
        "signal",
        "schema_version",
        "schema_check",
        "identity",
        "reference",
        "idempotency_key",
        "status",
        "attempts",
        "error",
        "status_history",
        "occurred",
        "received",
        "claimed",
        "due",
        "processed",
        "payload",
        "processing_result",
        "rollup_applied",
    )

    @admin.display(description="identity")
    def identity(self, obj: Event) -> str:
        url = reverse("admin:events_app_crmrecord_change", args=[obj.crm_record_id])
        events_url = reverse("admin:events_app_event_changelist")
        return format_html(
            '{}: {} &middot; <a href="{}">CRM record</a> &middot; '
            '<a href="{}?crm_record__id__exact={}">its events</a>',
            obj.identity_type,
            obj.identity_id,
            url,
            events_url,
            obj.crm_record_id,
        )

    @admin.display(description="last error")
    def error(self, obj: Event) -> str:
        if not obj.last_error:
            return "-"
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.last_error)

    @admin.display(description="status history")
    def status_history(self, obj: Event) -> str:
        steps = list(obj.transitions.order_by("-at", "-id")[: STATUS_HISTORY_LIMIT + 1])
        cut = len(steps) > STATUS_HISTORY_LIMIT
        steps = steps[:STATUS_HISTORY_LIMIT][::-1]
        rows = [
            (step.status, step.attempt, datetime_display(step.at), step.note or "-")
            for step in steps
        ]
        if not cut:
            # Arrival is not written as a step: the event row itself says it.
            rows.insert(0, ("pending", 0, datetime_display(obj.received_at), "received"))
        body = format_html_join(
            "\n",
            '<tr class="transition"><td>{}</td><td>{}</td><td class="bigmind-when">{}</td>'
            '<td class="bigmind-long" style="white-space: pre-wrap">{}</td></tr>',
            rows,
        )
        note = (
            format_html("<p class='help'>The latest {} steps only.</p>", STATUS_HISTORY_LIMIT)
            if cut
            else ""
        )
        return format_html(
            '{}<table class="bigmind-status-history"><thead><tr><th scope="col">Status</th>'
            '<th scope="col">Attempt</th><th scope="col">At</th><th scope="col">Note</th>'
            "</tr></thead><tbody>{}</tbody></table>",
            note,
            body,
        )

    @admin.display(description="CRM record")
    def identity_column(self, obj: Event) -> SafeString:
        return cut_cell(f"{obj.identity_type}:{obj.identity_id}")

    @admin.display(description="status (attempts)", ordering="status")
    def tag_status(self, obj: Event) -> SafeString:
        # "Failed (3)": three attempts; an event not yet tried shows its status alone.
        status = obj.get_status_display()
        label = f"{status} ({obj.attempts})" if obj.attempts else status
        attempts = ngettext(
            "%(count)d processing attempt", "%(count)d processing attempts", obj.attempts
        ) % {"count": obj.attempts}
        return format_html('<span title="{}: {}">{}</span>', status, attempts, label)

    @admin.display(description="reference")
    def reference_column(self, obj: Event) -> SafeString:
        return cut_cell(obj.reference)

    @admin.display(description="schema valid", ordering="schema_valid")
    def icon_schema_valid(self, obj: Event) -> SafeString:
        # The admin's own yes/no icon, in a narrow column; the hover says what it means.
        if obj.schema_valid:
            icon, title = "yes", "Valid (or no schema)"
        else:
            icon, title = "no", f"Invalid: data failed schema version {obj.schema_version}"
        return format_html(
            '<span class="bigmind-cut" title="{}"><img src="{}" alt="{}"></span>',
            title,
            static(f"admin/img/icon-{icon}.svg"),
            str(obj.schema_valid),
        )

    @admin.display(description="schema check")
    def schema_check(self, obj: Event) -> str:
        if obj.schema_valid:
            if obj.schema_version is None:
                return "Not checked: the signal had no schema."
            return f"Valid against schema version {obj.schema_version}."
        rows = [
            (str(v.get("path", "")), str(v.get("message", "")), str(v.get("keyword", "")))
            for v in (obj.violations or [])
            if isinstance(v, dict)
        ]
        body = format_html_join(
            "\n",
            '<tr class="violation"><td><code>{}</code></td>'
            '<td class="bigmind-long" style="white-space: pre-wrap">{}</td><td>{}</td></tr>',
            rows,
        )
        return format_html(
            "<p><strong>Invalid: data failed schema version {}</strong>; accepted because the "
            "signal's enforcement was <em>flag</em>. {}:</p>"
            '<table class="bigmind-violations"><thead><tr><th scope="col">Path</th>'
            '<th scope="col">Message</th><th scope="col">Keyword</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            obj.schema_version,
            ngettext("%(count)d violation", "%(count)d violations", len(rows))
            % {"count": len(rows)},
            body,
        )

    occurred = time_field("timestamp", "timestamp (when it happened)")
    received = time_field("received_at", "received")
    claimed = time_field("claimed_at", "claimed by a worker")
    # due_at: before it, the sweep does not queue a pending event again (retry backoff).
    due = time_field("due_at", "next attempt, not before")
    processed = time_field("processed_at", "processed")
    payload = json_field("data", "data")

    @admin.display(description="result (processor and insight)")
    def processing_result(self, obj: Event) -> str:
        # The result carries a copy of the rollups; they are shown once, below, from the
        # `rollup` column that reprocessing reuses.
        if obj.result is None:
            return "-"
        result = obj.result
        if isinstance(result, dict):
            result = {key: value for key, value in result.items() if key != "rollup"}
        return pretty_json(result)

    @admin.display(description="rollups applied")
    def rollup_applied(self, obj: Event) -> str:
        rollup = obj.rollup
        if rollup is None and isinstance(obj.result, dict):
            rollup = obj.result.get("rollup")
        return "-" if rollup is None else pretty_json(rollup)


@admin.register(CrmRecord)
class CrmRecordAdmin(DataAdmin):
    list_display = (
        "tag_type",
        "external_id_column",
        "organization_column",
        "when_first_seen",
        "when_last_seen",
    )
    list_display_links = ("external_id_column",)
    list_filter = ("type", "organization")
    list_select_related = ("organization",)
    search_fields = ("=external_id",)
    show_full_result_count = False

    @admin.display(description="type", ordering="type")
    def tag_type(self, obj: CrmRecord) -> SafeString:
        return cut_cell(obj.type)

    @admin.display(description="external id", ordering="external_id")
    def external_id_column(self, obj: CrmRecord) -> SafeString:
        return cut_cell(obj.external_id)

    @admin.display(description="organization", ordering="organization__slug")
    def organization_column(self, obj: CrmRecord) -> SafeString:
        return cut_cell(obj.organization)

    @admin.display(description="first seen", ordering="first_seen_at")
    def when_first_seen(self, obj: CrmRecord) -> str:
        return datetime_display(obj.first_seen_at)

    @admin.display(description="last seen", ordering="last_seen_at")
    def when_last_seen(self, obj: CrmRecord) -> str:
        return datetime_display(obj.last_seen_at)

    fields = ("organization", "type", "external_id", "first_seen_at", "last_seen_at")
    readonly_fields = fields

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: CrmRecord | None = None,
    ) -> HttpResponse:
        if obj is not None:
            # The same selector as GET /v1/records/<type>/<id>, for the record's organization
            # (which get_object has already checked against the user's).
            profile = crm_record_profile(
                organization_id=obj.organization_id, type=obj.type, external_id=obj.external_id
            )
            context["bigmind_profile"] = record_profile_context(profile)
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(Insight)
class InsightAdmin(RecordSignalColumns, DataAdmin):
    # The kind is a filter, and the processor and its version are on the insight's page (the
    # same for nearly every row).
    list_display = (
        "when_occurred",
        "record_column",
        "signal_column",
        "num_score",
        "wide_summary",
    )
    list_display_links = ("when_occurred",)
    list_filter = ("kind", SignalListFilter, "signal__type", "organization")
    list_select_related = ("signal", "signal__organization", "crm_record__organization")
    search_fields = ("=event_id",)
    raw_id_fields = ("crm_record",)
    show_full_result_count = False

    @admin.display(description="occurred", ordering="occurred_at")
    def when_occurred(self, obj: Insight) -> str:
        return datetime_display(obj.occurred_at)

    @admin.display(description="score", ordering="score")
    def num_score(self, obj: Insight) -> int:
        return obj.score

    @admin.display(description="summary")
    def wide_summary(self, obj: Insight) -> SafeString:
        return cut_cell(obj.summary, title=f"{obj.summary}\n\nNext: {obj.next_action}")


@admin.register(MetricAggregate)
class MetricAggregateAdmin(RecordSignalColumns, DataAdmin):
    organization_lookup = "crm_record__organization"
    # The value the signal's aggregation asks for (as the API reports it); count, sum, min and
    # max are all on the bucket's page and in the value's hover.
    list_display = (
        "record_column",
        "signal_column",
        "tag_period",
        "when_bucket_start",
        "num_value",
        "num_count",
    )
    list_display_links = ("record_column",)
    list_filter = ("period", SignalListFilter)
    list_select_related = ("signal", "signal__organization", "crm_record__organization")
    raw_id_fields = ("crm_record",)
    show_full_result_count = False

    @admin.display(description="period", ordering="period")
    def tag_period(self, obj: MetricAggregate) -> SafeString:
        return cut_cell(obj.period)

    @admin.display(description="period start", ordering="bucket_start")
    def when_bucket_start(self, obj: MetricAggregate) -> str:
        return datetime_display(obj.bucket_start)

    @admin.display(description="value")
    def num_value(self, obj: MetricAggregate) -> SafeString:
        aggregation = obj.signal.aggregation or "sum"
        value = bucket_value(obj, aggregation)
        return cut_cell(
            number_text(value),
            title=f"{aggregation}: {number_text(value, exact=True)}; "
            f"count {number_text(obj.count, exact=True)}, sum {number_text(obj.sum, exact=True)}, "
            f"min {number_text(obj.min, exact=True)}, max {number_text(obj.max, exact=True)}",
        )

    @admin.display(description="events", ordering="count")
    def num_count(self, obj: MetricAggregate) -> SafeString:
        return cut_cell(number_text(obj.count))


@admin.register(RecordState)
class RecordStateAdmin(RecordSignalColumns, DataAdmin):
    organization_lookup = "crm_record__organization"
    list_display = (
        "record_column",
        "signal_column",
        "value_column",
        "when_timestamp",
        "when_updated",
    )
    list_display_links = ("record_column",)
    list_filter = (SignalListFilter,)
    list_select_related = ("signal", "signal__organization", "crm_record__organization")
    raw_id_fields = ("crm_record",)
    show_full_result_count = False

    @admin.display(description="value")
    def value_column(self, obj: RecordState) -> SafeString:
        return cut_cell(compact_json(obj.value))

    @admin.display(description="as of (event timestamp)", ordering="timestamp")
    def when_timestamp(self, obj: RecordState) -> str:
        return datetime_display(obj.timestamp)

    @admin.display(description="updated", ordering="updated_at")
    def when_updated(self, obj: RecordState) -> str:
        return datetime_display(obj.updated_at)


@admin.register(RejectedEvent)
class RejectedEventAdmin(IdReceivedColumns, DataAdmin):
    # The error is the code and message the client got. The identity, and whether the body
    # was cut, are on the rejection's page, next to the body (search finds an identity).
    list_display = (
        "ref_id",
        "when_received",
        "signal_column",
        "wide_error",
        "ref_replayed",
    )
    list_display_links = ("ref_id",)
    list_filter = ("reason", "organization", SignalSlugFilter, "received_at")
    search_fields = ("=id", "=signal_slug", "=identity_id", "=replayed_event_id")
    list_select_related = ("organization",)
    date_hierarchy = "received_at"
    show_full_result_count = False
    fields = (
        "id",
        "organization",
        "api_key",
        "received_at",
        "signal_slug",
        "reason",
        "message",
        "violations_pretty",
        "identity",
        "body_pretty",
        "body_truncated",
        "body_bytes",
        "replayed_event_id",
        "replayed_at",
    )
    readonly_fields = fields
    actions = (replay,)
    # Selecting more than a page's worth would hold the request for one ingest per row.
    replay_max = 100

    @admin.display(description="identity")
    def identity(self, obj: RejectedEvent) -> str:
        if not obj.identity_type:
            return "-"
        return f"{obj.identity_type}:{obj.identity_id}"

    @admin.display(description="signal (as sent)", ordering="signal_slug")
    def signal_column(self, obj: RejectedEvent) -> SafeString:
        # Organization and slug, as the event list writes a signal.
        return cut_cell(f"{obj.organization.slug}/{obj.signal_slug or '-'}")

    @admin.display(description="error", ordering="reason")
    def wide_error(self, obj: RejectedEvent) -> SafeString:
        text = f"{obj.reason}: {obj.message}"
        return format_html(
            '<span class="bigmind-cut" title="{}"><code>{}</code> {}</span>',
            text,
            obj.reason,
            obj.message,
        )

    @admin.display(description="replayed as", ordering="replayed_event_id")
    def ref_replayed(self, obj: RejectedEvent) -> SafeString | str:
        if obj.replayed_event_id is None:
            return "-"
        url = reverse("admin:events_app_event_change", args=[obj.replayed_event_id])
        return short_id(obj.replayed_event_id, url=url)

    @admin.display(description="violations")
    def violations_pretty(self, obj: RejectedEvent) -> str:
        if not obj.violations:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(obj.violations, indent=2))

    @admin.display(description="body (as sent)")
    def body_pretty(self, obj: RejectedEvent) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.body)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # Replaying stores events: for staff who may change rejections, not just view them.
        return request.user.has_perm("events_app.change_rejectedevent")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        rejection_overflow_notice(self, request)
        return super().changelist_view(request, extra_context)
