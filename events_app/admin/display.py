"""How the data plane's admin writes values: list cells, read-only fields, the CRM record's
profile. Presentation only: no query of its own (the profile comes from
events_app.selectors.crm_record_profile)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from bigmind.display import datetime_display, short_id
from events_app.models import MetricAggregate
from events_app.selectors import CrmRecordProfile

# --- List columns -----------------------------------------------------------------------------
# Every list must fit 1400 px with the nav sidebar and the filter open (issue #12): about 750 px
# for the table. events_app/static/events_app/lists.css lays each list out at its container's
# width (table-layout: fixed) and gives columns a width by the prefix of their method's name,
# which Django puts in the header's class (column-<name>):
#   ref_*  a short id (8 characters, the whole id on hover)
#   when_* a date and time as bigmind.display.datetime_display writes it
#   tag_*  a short word (a status, a kind, a period)
#   num_*  a number
#   code_* a code of a few characters (an HTTP status)
#   icon_* one of the admin's yes/no icons (whether an event's data passed its schema)
#   wide_* the list's main text (30% of the table)
# Columns without a prefix share what is left; their text is cut with an ellipsis (CSS) and the
# whole value is in the cell's title, shown on hover. Detail pages show every value whole.


def cut_cell(value: Any, *, title: str | None = None) -> SafeString:
    """A list cell for text that may be longer than its column: the CSS cuts it with an
    ellipsis, the whole text (or `title`) shows on hover."""
    text = "-" if value is None or value == "" else str(value)
    return format_html('<span class="bigmind-cut" title="{}">{}</span>', title or text, text)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def number_text(value: float | int | None, *, exact: bool = False) -> str:
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


class SignalColumn:
    @admin.display(description="signal", ordering="signal__slug")
    def signal_column(self, obj: Any) -> SafeString:
        return cut_cell(obj.signal, title=f"{obj.signal} ({obj.signal.name})")


class RecordSignalColumns(SignalColumn):
    """The CRM record and signal columns of the lists of what the pipeline derived."""

    @admin.display(description="CRM record")
    def record_column(self, obj: Any) -> SafeString:
        record = obj.crm_record
        return cut_cell(record, title=f"{record} ({record.organization.slug})")


class IdReceivedColumns:
    """The short id and reception time of the lists of requests (events, rejections)."""

    @admin.display(description="ID", ordering="id")
    def ref_id(self, obj: Any) -> SafeString:
        return short_id(obj.pk)

    @admin.display(description="received", ordering="received_at")
    def when_received(self, obj: Any) -> str:
        return datetime_display(obj.received_at)


# --- Detail pages -----------------------------------------------------------------------------
def pretty_json(value: Any) -> SafeString:
    # format_html escapes the text: a payload's "<script>" is shown, never run.
    return format_html(
        '<pre class="bigmind-json" style="white-space: pre-wrap">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, default=str),
    )


def time_field(attribute: str, description: str) -> Callable[[Any, Any], str]:
    """A read-only field showing the object's `attribute` time as `datetime_display` writes it."""

    @admin.display(description=description)
    def show(model_admin: Any, obj: Any) -> str:
        return datetime_display(getattr(obj, attribute))

    return show


def json_field(attribute: str, description: str) -> Callable[[Any, Any], str]:
    """A read-only field showing the object's `attribute` JSON pretty-printed ("-" if null)."""

    @admin.display(description=description)
    def show(model_admin: Any, obj: Any) -> str:
        value = getattr(obj, attribute)
        return "-" if value is None else pretty_json(value)

    return show


def bucket_value(bucket: MetricAggregate, aggregation: str) -> float | int | None:
    # As the API reports it (events_app/api/records.py).
    if aggregation == "avg":
        return bucket.sum / bucket.count if bucket.count else None
    return {"sum": bucket.sum, "count": bucket.count, "min": bucket.min, "max": bucket.max}.get(
        aggregation
    )


def record_profile_context(profile: CrmRecordProfile) -> dict[str, Any]:
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
                        "value": bucket_value(bucket, series.signal.aggregation),
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
