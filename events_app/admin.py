from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import IntegerField, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from bigmind.admin_tenancy import OrganizationScopedAdmin, admin_scope, admin_scope_filter
from bigmind.display import datetime_display, short_id
from bigmind.errors import ApplicationError
from events_app.models import (
    CrmRecord,
    Event,
    Insight,
    MetricAggregate,
    RecordState,
    RejectedEvent,
)
from events_app.pipeline.reprocess import REPROCESSABLE, events_reprocess
from events_app.rejections import rejection_overflow_total, rejection_replay
from events_app.selectors import CrmRecordProfile, crm_record_profile
from signals_app.admin.signal_admin import SignalAdmin
from signals_app.models import Signal


class ReadOnlyAdmin(admin.ModelAdmin):
    # The data plane is written by the API and the workers only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- List columns -----------------------------------------------------------------------------
# Every list must fit 1400 px with the nav sidebar and the filter open (issue #12): about 750 px
# for the table. events_app/static/events_app/lists.css lays each list out at its container's
# width (table-layout: fixed) and gives columns a width by the prefix of their method's name,
# which Django puts in the header's class (column-<name>):
#   ref_*  a short id (8 characters, the whole id on hover)
#   when_* a date and time as bigmind.display.datetime_display writes it
#   tag_*  a short word (a status, a kind, a period)
#   num_*  a number
#   wide_* the list's main text (30% of the table)
# Columns without a prefix share what is left; their text is cut with an ellipsis (CSS) and the
# whole value is in the cell's title, shown on hover. Detail pages show every value whole.


def _cut(value: Any, *, title: str | None = None) -> SafeString:
    """A list cell for text that may be longer than its column: the CSS cuts it with an
    ellipsis, the whole text (or `title`) shows on hover."""
    text = "-" if value is None or value == "" else str(value)
    return format_html('<span class="bigmind-cut" title="{}">{}</span>', title or text, text)


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _number(value: float | int | None, *, exact: bool = False) -> str:
    """A number for a list column (at most about 14 characters: whole numbers with thousands
    separators, two decimals, or four significant digits), or `exact` for its hover."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}" if exact or abs(value) < 10**12 else f"{value:.4g}"
    if exact:
        return repr(value)
    return f"{value:,.2f}" if 1 <= abs(value) < 1e9 else f"{value:.4g}"


class DataAdmin(OrganizationScopedAdmin, ReadOnlyAdmin):
    """The data plane's lists and pages: scoped to the user's organization, read-only, laid out
    by events_app/admin.css (list widths, readable names in both themes)."""

    class Media:
        css = {"all": ("events_app/admin.css",)}


class _SignalColumn:
    @admin.display(description="signal", ordering="signal__slug")
    def signal_column(self, obj: Any) -> SafeString:
        return _cut(obj.signal, title=f"{obj.signal} ({obj.signal.name})")


class _RecordSignalColumns(_SignalColumn):
    """The CRM record and signal columns of the lists of what the pipeline derived."""

    @admin.display(description="CRM record")
    def record_column(self, obj: Any) -> SafeString:
        record = obj.crm_record
        return _cut(record, title=f"{record} ({record.organization.slug})")


class _IdReceivedColumns:
    """The short id and reception time of the lists of requests (events, rejections)."""

    @admin.display(description="ID", ordering="id")
    def ref_id(self, obj: Any) -> SafeString:
        return short_id(obj.pk)

    @admin.display(description="received", ordering="received_at")
    def when_received(self, obj: Any) -> str:
        return datetime_display(obj.received_at)


def _pretty_json(value: Any) -> SafeString:
    # format_html escapes the text: a payload's "<script>" is shown, never run.
    return format_html(
        '<pre class="bigmind-json" style="white-space: pre-wrap">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, default=str),
    )


def _time_display(attribute: str, description: str) -> Callable[[Any, Any], str]:
    """A read-only field showing the object's `attribute` time as `datetime_display` writes it."""

    @admin.display(description=description)
    def show(model_admin: Any, obj: Any) -> str:
        return datetime_display(getattr(obj, attribute))

    return show


def _json_display(attribute: str, description: str) -> Callable[[Any, Any], str]:
    """A read-only field showing the object's `attribute` JSON pretty-printed ("-" if null)."""

    @admin.display(description=description)
    def show(model_admin: Any, obj: Any) -> str:
        value = getattr(obj, attribute)
        return "-" if value is None else _pretty_json(value)

    return show


def _organization_filtered(request: HttpRequest) -> int | None:
    """The organization the list is cut to: a scoped user's own, or the one picked in the
    organization filter. None: no further cut than the user's scope (which for a superuser is
    every organization, and for staff without a membership none)."""
    scope = admin_scope(request)
    if scope.restricted:
        return scope.organization_id
    value = request.GET.get("organization__id__exact", "")
    return int(value) if value.isascii() and value.isdigit() else None


class SignalListFilter(admin.SimpleListFilter):
    """Signals of the organizations in view, by name; not Django's field filter, which would
    list every signal of every organization (or, "related only", read every event for them)."""

    title = "signal"
    parameter_name = "signal"
    # A few dozen signals per organization is usual; past this, pick the organization first.
    max_choices = 100

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        signals = admin_scope_filter(
            Signal.objects.select_related("organization").order_by("organization__slug", "slug"),
            request=request,
            lookup="organization",
        )
        organization = _organization_filtered(request)
        if organization is not None:
            signals = signals.filter(organization_id=organization)
        return [(str(signal.pk), str(signal)) for signal in signals[: self.max_choices]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise IncorrectLookupParameters(f"Not a signal id: {value[:40]!r}")
        return queryset.filter(signal_id=int(value))


# Past this many, an event's page shows the latest steps only (a reprocessed-in-a-loop event
# must not make its page unbounded).
STATUS_HISTORY_LIMIT = 200


@admin.register(Event)
class EventAdmin(_IdReceivedColumns, _SignalColumn, DataAdmin):
    # identity_type and identity_id are one column (the record); attempts go with the status.
    list_display = (
        "ref_id",
        "when_received",
        "signal_column",
        "identity_column",
        "tag_status",
        "reference_column",
    )
    list_display_links = ("ref_id",)
    list_filter = ("status", SignalListFilter, "signal__type", "organization", "received_at")
    search_fields = ("=id", "=reference", "=identity_id", "=idempotency_key")
    list_select_related = ("signal", "signal__organization")
    date_hierarchy = "received_at"
    # No COUNT(*) over the whole table on every list page.
    show_full_result_count = False
    raw_id_fields = ("crm_record",)
    actions = ("reprocess",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "organization",
                    "signal",
                    "schema_version",
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
        return _cut(f"{obj.identity_type}:{obj.identity_id}")

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
        return _cut(obj.reference)

    occurred = _time_display("timestamp", "timestamp (when it happened)")
    received = _time_display("received_at", "received")
    claimed = _time_display("claimed_at", "claimed by a worker")
    # due_at: before it, the sweep does not queue a pending event again (retry backoff).
    due = _time_display("due_at", "next attempt, not before")
    processed = _time_display("processed_at", "processed")
    payload = _json_display("data", "data")

    @admin.display(description="result (processor and insight)")
    def processing_result(self, obj: Event) -> str:
        # The result carries a copy of the rollups; they are shown once, below, from the
        # `rollup` column that reprocessing reuses.
        if obj.result is None:
            return "-"
        result = obj.result
        if isinstance(result, dict):
            result = {key: value for key, value in result.items() if key != "rollup"}
        return _pretty_json(result)

    @admin.display(description="rollups applied")
    def rollup_applied(self, obj: Event) -> str:
        rollup = obj.rollup
        if rollup is None and isinstance(obj.result, dict):
            rollup = obj.result.get("rollup")
        return "-" if rollup is None else _pretty_json(rollup)

    @admin.action(description="Reprocess selected events (rollups are never counted twice)")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
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
        self.message_user(request, message, messages.SUCCESS if queued else messages.WARNING)


def _bucket_value(bucket: MetricAggregate, aggregation: str) -> float | int | None:
    # As the API reports it (events_app/api/read_views.py).
    if aggregation == "avg":
        return bucket.sum / bucket.count if bucket.count else None
    return {"sum": bucket.sum, "count": bucket.count, "min": bucket.min, "max": bucket.max}.get(
        aggregation
    )


def _profile_context(profile: CrmRecordProfile) -> dict[str, Any]:
    """The record's profile as rows for admin/events_app/crmrecord/change_form.html, which
    escapes every value (JSON is pre-formatted here, as text)."""

    def event_url(event_id: Any) -> str:
        return reverse("admin:events_app_event_change", args=[event_id])

    return {
        "event_count": profile.event_count,
        "engagement_score": profile.engagement_score,
        "events_url": reverse("admin:events_app_event_changelist")
        + f"?crm_record__id__exact={profile.record.pk}",
        "events_by_signal": [
            {
                "signal": item.signal,
                "count": item.count,
                "last_event_at": datetime_display(item.last_event_at),
            }
            for item in profile.events_by_signal
        ],
        "states": [
            {
                "signal": state.signal.slug,
                "value": json.dumps(state.value, indent=2, ensure_ascii=False, default=str),
                "timestamp": datetime_display(state.timestamp),
                "updated_at": datetime_display(state.updated_at),
                "event_url": event_url(state.event_id),
            }
            for state in profile.states
        ],
        "aggregates": [
            {
                "signal": series.signal.slug,
                "aggregation": series.signal.aggregation,
                "period": series.signal.period,
                "value_field": series.signal.value_field or "value",
                "buckets": [
                    {
                        "start": datetime_display(bucket.bucket_start),
                        "value": _bucket_value(bucket, series.signal.aggregation),
                        "count": bucket.count,
                        "sum": bucket.sum,
                        "min": bucket.min,
                        "max": bucket.max,
                    }
                    for bucket in series.buckets
                ],
            }
            for series in profile.aggregates
        ],
        "insights": [
            {
                "occurred_at": datetime_display(insight.occurred_at),
                "signal": insight.signal.slug,
                "kind": insight.get_kind_display(),
                "score": insight.score,
                "summary": insight.summary,
                "next_action": insight.next_action,
                "reasons": [str(reason) for reason in insight.reasons or []],
                "processor": f"{insight.processor} {insight.processor_version}",
                "event_url": event_url(insight.event_id),
            }
            for insight in profile.insights
        ],
    }


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
        return _cut(obj.type)

    @admin.display(description="external id", ordering="external_id")
    def external_id_column(self, obj: CrmRecord) -> SafeString:
        return _cut(obj.external_id)

    @admin.display(description="organization", ordering="organization__slug")
    def organization_column(self, obj: CrmRecord) -> SafeString:
        return _cut(obj.organization)

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
            context["bigmind_profile"] = _profile_context(profile)
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(Insight)
class InsightAdmin(_RecordSignalColumns, DataAdmin):
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
        return _cut(obj.summary, title=f"{obj.summary}\n\nNext: {obj.next_action}")


@admin.register(MetricAggregate)
class MetricAggregateAdmin(_RecordSignalColumns, DataAdmin):
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
        return _cut(obj.period)

    @admin.display(description="period start", ordering="bucket_start")
    def when_bucket_start(self, obj: MetricAggregate) -> str:
        return datetime_display(obj.bucket_start)

    @admin.display(description="value")
    def num_value(self, obj: MetricAggregate) -> SafeString:
        aggregation = obj.signal.aggregation or "sum"
        value = _bucket_value(obj, aggregation)
        return _cut(
            _number(value),
            title=f"{aggregation}: {_number(value, exact=True)}; "
            f"count {_number(obj.count, exact=True)}, sum {_number(obj.sum, exact=True)}, "
            f"min {_number(obj.min, exact=True)}, max {_number(obj.max, exact=True)}",
        )

    @admin.display(description="events", ordering="count")
    def num_count(self, obj: MetricAggregate) -> SafeString:
        return _cut(_number(obj.count))


@admin.register(RecordState)
class RecordStateAdmin(_RecordSignalColumns, DataAdmin):
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
        return _cut(_compact_json(obj.value))

    @admin.display(description="as of (event timestamp)", ordering="timestamp")
    def when_timestamp(self, obj: RecordState) -> str:
        return datetime_display(obj.timestamp)

    @admin.display(description="updated", ordering="updated_at")
    def when_updated(self, obj: RecordState) -> str:
        return datetime_display(obj.updated_at)


class _SignalSlugFilter(admin.SimpleListFilter):
    # Not a plain field filter: that lists every distinct slug ever refused, and unknown-signal
    # refusals can bring many. The most recent ones (of the selected organization) are enough;
    # search finds the rest.
    title = "signal slug"
    parameter_name = "signal_slug"
    max_choices = 30

    scan_rows = 1000

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        rows = model_admin.get_queryset(request)  # cut to the user's organization
        organization = _organization_filtered(request)
        if organization is not None:
            rows = rows.filter(organization_id=organization)
        # The latest rows only (an index range), not a GROUP BY over the whole table.
        latest = rows.order_by("-received_at").values_list("signal_slug", flat=True)
        slugs = list(dict.fromkeys(latest[: self.scan_rows]))[: self.max_choices]
        return [(slug, slug or "(none)") for slug in slugs]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(signal_slug=value)


@admin.register(RejectedEvent)
class RejectedEventAdmin(_IdReceivedColumns, DataAdmin):
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
    list_filter = ("reason", "organization", _SignalSlugFilter, "received_at")
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
    actions = ("replay",)
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
        return _cut(f"{obj.organization.slug}/{obj.signal_slug or '-'}")

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
        organization = _organization_filtered(request)
        if organization is None and admin_scope(request).restricted:
            overflow = 0  # staff without a membership see no organization's numbers
        else:
            overflow = rejection_overflow_total(organization_id=organization)
        if overflow:
            self.message_user(
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
        return super().changelist_view(request, extra_context)

    @admin.action(description="Replay selected rejections", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[RejectedEvent]) -> None:
        # Oldest first, so replayed events keep the order they were first sent in.
        selected = list(queryset.order_by("received_at", "id")[: self.replay_max + 1])
        if len(selected) > self.replay_max:
            self.message_user(
                request,
                f"Only the oldest {self.replay_max} selected rejections were replayed.",
                messages.WARNING,
            )
            selected = selected[: self.replay_max]
        for rejection in selected:
            label = f"Rejection {rejection.id} ({rejection.signal_slug or '-'})"
            try:
                result = rejection_replay(rejection=rejection)
            except ApplicationError as exc:
                self.message_user(request, f"{label}: not replayed: {exc.message}", messages.ERROR)
                continue
            if result.accepted:
                self.message_user(
                    request, f"{label}: accepted as event {result.event_id}.", messages.SUCCESS
                )
            else:
                assert result.error is not None
                self.message_user(
                    request,
                    f"{label}: refused again ({result.error.code}): {result.error.message}",
                    messages.WARNING,
                )


# --- Signals: the events columns ---------------------------------------------------------------
# signals_app's SignalAdmin, with the columns read from the events: the control plane imports
# nothing of the data plane, so they are added here and Signal is registered with this class
# in that one's place (signals_app comes first in INSTALLED_APPS, so its admin is loaded first).

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
