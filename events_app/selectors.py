"""Reads of the data plane: one event, a filtered page of events, a CRM record's profile, an
organization's webhook endpoints and their deliveries.

Every selector takes the caller's organization and never returns another organization's rows:
a foreign object is answered exactly like a missing one.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.core import signing
from django.db import models
from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from bigmind.errors import BadRequest, NotFound
from events_app.models import (
    CrmRecord,
    Event,
    Insight,
    MetricAggregate,
    PurgedEventCount,
    RecordState,
    WebhookDelivery,
    WebhookEndpoint,
)
from events_app.pipeline.engagement import engagement_score
from signals_app.models import Signal

M = TypeVar("M", bound=models.Model)

# Canonical (8-4-4-4-12) or bare 32-digit hex, any case. `uuid.UUID` alone is looser: it takes
# braces, "urn:uuid:", underscores and non-ASCII digits, none of which is an id we hand out.
_UUID_TEXT = re.compile(r"^[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


def event_get(
    *, organization_id: int, event_id: str, signals: frozenset[str] | None = None
) -> Event:
    """The organization's event with this id; anything else (foreign, unknown, malformed, or of
    a signal outside `signals`, an API key's allow-list) is 404."""
    not_found = NotFound(f"Event not found: {event_id}", code="event_not_found")
    if not _UUID_TEXT.match(event_id):
        raise not_found
    events = Event.objects.select_related("signal").filter(
        organization_id=organization_id, pk=uuid.UUID(event_id)
    )
    if signals is not None:
        events = events.filter(signal__slug__in=sorted(signals))
    event = events.first()
    if event is None:
        raise not_found
    return event


# --- Listing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventFilters:
    signal: str | None = None
    identity_type: str | None = None
    identity_id: str | None = None
    status: str | None = None
    reference: str | None = None
    schema_valid: bool | None = None
    since: datetime | None = None  # inclusive, on received_at
    until: datetime | None = None  # exclusive, on received_at


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    next_cursor: str | None


# Signed, so a client cannot forge a position it was never given, nor make us parse arbitrary
# input; the position itself is no secret. A rotated SECRET_KEY (without a fallback) makes the
# cursors handed out before it invalid, which costs a client a restart from the first page.
# Each list signs with its own salt, so one list's cursor is not another's, and keyset_page adds
# the organization to it, so a cursor handed to one organization is refused ("cursor is
# invalid") for any other instead of paging that organization's rows from a foreign position.
_EVENT_CURSOR_SALT = "events_app.selectors.event_list.cursor"
# Our cursors are about 90 characters; anything much longer is not one of ours.
_CURSOR_MAX_LENGTH = 512
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _cursor_encode(row: Any, salt: str, order_field: str) -> str:
    # Integer microseconds: exact (both databases keep microseconds) and short. A UUID key as
    # hex (the form cursors have always had), an integer key as itself.
    key = row.pk.hex if isinstance(row.pk, uuid.UUID) else row.pk
    position = [(getattr(row, order_field) - _EPOCH) // _MICROSECOND, key]
    return signing.Signer(salt=salt).sign_object(position)


def _cursor_decode(cursor: str, salt: str) -> tuple[datetime, uuid.UUID | int]:
    invalid = BadRequest("cursor is invalid", code="invalid_cursor")
    if len(cursor) > _CURSOR_MAX_LENGTH:
        raise invalid
    try:
        micros, key = signing.Signer(salt=salt).unsign_object(cursor)
        at = _EPOCH + micros * _MICROSECOND
        row_id = key if type(key) is int else uuid.UUID(hex=key)
    except (signing.BadSignature, TypeError, ValueError, OverflowError) as exc:
        raise invalid from exc
    return at, row_id


def keyset_page(
    rows: QuerySet[M],
    *,
    organization_id: int,
    cursor: str | None,
    limit: int,
    salt: str,
    order_field: str = "received_at",
) -> tuple[list[M], str | None]:
    """One page of `rows` (one organization's) newest first by (order_field, id), and the next
    page's cursor, signed for this list (`salt`) and this organization.

    Keyset pagination: the cursor is the last row's position and the next page is everything
    strictly after it in that order. Since (order_field, id) is unique and never changes, rows
    that existed when the first page was read are neither repeated nor skipped by later pages,
    however many rows arrive in between (new ones sort before the first page).
    """
    salt = f"{salt}:{organization_id}"
    if cursor is not None:
        at, row_id = _cursor_decode(cursor, salt)
        # The redundant `received_at <= X` gives the (organization, -received_at) index a range
        # to scan; the OR alone would leave the planner a filter, not an index condition.
        rows = rows.filter(
            Q(**{f"{order_field}__lt": at}) | Q(**{order_field: at, "pk__lt": row_id}),
            **{f"{order_field}__lte": at},
        )
    # One row more than asked tells whether there is a next page without a second query.
    found = list(rows.order_by(f"-{order_field}", "-pk")[: limit + 1])
    if len(found) <= limit:
        return found, None
    page = found[:limit]
    return page, _cursor_encode(page[-1], salt, order_field)


def event_list(
    *,
    organization_id: int,
    filters: EventFilters,
    limit: int,
    cursor: str | None = None,
    signals: frozenset[str] | None = None,
) -> EventPage:
    """A page of the organization's events, newest first (see keyset_page); only those of
    `signals` (slugs, an API key's allow-list) when given."""
    events = Event.objects.select_related("signal").filter(organization_id=organization_id)
    if signals is not None:
        events = events.filter(signal__slug__in=sorted(signals))
    lookups = {
        "signal__slug": filters.signal,
        "identity_type": filters.identity_type,
        "identity_id": filters.identity_id,
        "status": filters.status,
        "reference": filters.reference,
        "schema_valid": filters.schema_valid,
        "received_at__gte": filters.since,
        "received_at__lt": filters.until,
    }
    events = events.filter(**{name: value for name, value in lookups.items() if value is not None})
    page, next_cursor = keyset_page(
        events,
        organization_id=organization_id,
        cursor=cursor,
        limit=limit,
        salt=_EVENT_CURSOR_SALT,
    )
    return EventPage(events=page, next_cursor=next_cursor)


# --- CRM records ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalEventCount:
    signal: str
    signal_id: str
    count: int
    last_event_at: datetime


@dataclass(frozen=True)
class MetricSeries:
    signal: Signal
    buckets: list[MetricAggregate]  # newest first


@dataclass(frozen=True)
class CrmRecordProfile:
    record: CrmRecord
    event_count: int
    events_by_signal: list[SignalEventCount]
    states: list[RecordState]
    aggregates: list[MetricSeries]
    engagement_score: float
    insights: list[Insight]


PROFILE_BUCKETS = 12
PROFILE_INSIGHTS = 10


def _metric_series(record: CrmRecord) -> list[MetricSeries]:
    """The latest PROFILE_BUCKETS buckets of each metric signal, in the signal's current period.

    One query however many signals: a window function numbers each signal's buckets.
    """
    rows = (
        MetricAggregate.objects.filter(crm_record=record, period=models.F("signal__period"))
        .select_related("signal")
        .annotate(
            rank=Window(RowNumber(), partition_by=[models.F("signal_id")], order_by="-bucket_start")
        )
        .filter(rank__lte=PROFILE_BUCKETS)
        .order_by("signal__slug", "-bucket_start")
    )
    series: dict[int, MetricSeries] = {}
    for bucket in rows:
        series.setdefault(bucket.signal_id, MetricSeries(signal=bucket.signal, buckets=[]))
        series[bucket.signal_id].buckets.append(bucket)
    return list(series.values())


def crm_record_profile(
    *, organization_id: int, type: str, external_id: str, signals: frozenset[str] | None = None
) -> CrmRecordProfile:
    """The record's profile: when it was seen, events per signal, what processing made of it.

    With `signals` (an API key's allow-list, slugs) the per-signal parts hold only those
    signals, and a record none of whose events (live or purged) is of one of them is not found:
    a restricted key learns nothing of the other signals' records. The record's own fields
    (first and last seen, the engagement score) stay the record's.
    """
    not_found = NotFound(f"Record not found: {type}/{external_id}", code="record_not_found")
    if "\x00" in type or "\x00" in external_id:
        # Never stored (ingest refuses NUL), and PostgreSQL refuses it even as a parameter.
        raise not_found
    record = CrmRecord.objects.filter(
        organization_id=organization_id, type=type, external_id=external_id
    ).first()
    if record is None:
        raise not_found
    live = (
        Event.objects.filter(crm_record=record)
        .values("signal__slug", "signal__public_id")
        .annotate(count=Count("id"), last_event_at=Max("timestamp"))
        .order_by()
    )
    # Events deleted by retention still count (events_app/retention.py): their per-signal
    # totals come in the same query.
    purged = PurgedEventCount.objects.filter(crm_record=record).values(
        "signal__slug", "signal__public_id", "count", "last_event_at"
    )
    by_signal: dict[str, SignalEventCount] = {}
    for row in live.union(purged, all=True).order_by("signal__slug"):
        seen = by_signal.get(row["signal__public_id"])
        by_signal[row["signal__public_id"]] = SignalEventCount(
            signal=row["signal__slug"],
            signal_id=row["signal__public_id"],
            count=row["count"] + (seen.count if seen else 0),
            last_event_at=max(row["last_event_at"], seen.last_event_at)
            if seen
            else row["last_event_at"],
        )
    counts = list(by_signal.values())
    states = RecordState.objects.filter(crm_record=record)
    insights = Insight.objects.filter(crm_record=record)
    aggregates = _metric_series(record)
    if signals is not None:
        counts = [item for item in counts if item.signal in signals]
        if not counts:
            raise not_found
        states = states.filter(signal__slug__in=sorted(signals))
        insights = insights.filter(signal__slug__in=sorted(signals))
        aggregates = [series for series in aggregates if series.signal.slug in signals]
    return CrmRecordProfile(
        record=record,
        event_count=sum(item.count for item in counts),
        events_by_signal=counts,
        states=list(states.select_related("signal").order_by("signal__slug")),
        aggregates=aggregates,
        engagement_score=engagement_score(mass=record.engagement_mass, at=timezone.now()),
        insights=list(
            insights.select_related("signal").order_by("-occurred_at", "-event_id")[
                :PROFILE_INSIGHTS
            ]
        ),
    )


# --- Webhook endpoints and deliveries -----------------------------------------------------------
# The ids the API hands out: `we_` + 12 base62 (events_app/webhooks/endpoints.py) and `whevt_` +
# the delivery's UUID as 32 lower-case hex digits (webhook_event_id). Anything else is a 404
# without a query: PostgreSQL would refuse a NUL even as a parameter.
_ENDPOINT_ID = re.compile(r"^we_[0-9A-Za-z]{12}$")
_DELIVERY_ID = re.compile(r"^whevt_([0-9a-f]{32})$")
_ENDPOINT_CURSOR_SALT = "events_app.selectors.webhook_endpoint_list.cursor"
_DELIVERY_CURSOR_SALT = "events_app.selectors.webhook_delivery_list.cursor"


@dataclass(frozen=True)
class WebhookEndpointPage:
    endpoints: list[WebhookEndpoint]
    next_cursor: str | None


@dataclass(frozen=True)
class WebhookDeliveryFilters:
    status: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class WebhookDeliveryPage:
    deliveries: list[WebhookDelivery]
    next_cursor: str | None


def _signal_ids(organization_id: int, slugs: frozenset[str]) -> set[int]:
    return set(
        Signal.objects.filter(organization_id=organization_id, slug__in=sorted(slugs)).values_list(
            "pk", flat=True
        )
    )


def webhook_endpoint_within(endpoint: WebhookEndpoint, *, signals: frozenset[str] | None) -> bool:
    """Whether the endpoint is within an API key's signal allow-list (slugs; None: every
    signal): it names signals, and only allowed ones. One for "every signal" is not."""
    if signals is None:
        return True
    wanted = set(endpoint.signal_ids or ())
    return bool(wanted) and wanted <= _signal_ids(endpoint.organization_id, signals)


def webhook_endpoint_get(
    *, organization_id: int, endpoint_id: str, signals: frozenset[str] | None = None
) -> WebhookEndpoint:
    """The organization's endpoint with this `we_` id; foreign, unknown, malformed or outside
    `signals` (an API key's allow-list, see webhook_endpoint_within) is 404."""
    not_found = NotFound(
        f"Webhook endpoint not found: {endpoint_id}", code="webhook_endpoint_not_found"
    )
    if not _ENDPOINT_ID.match(endpoint_id):
        raise not_found
    endpoint = (
        WebhookEndpoint.objects.select_related("organization")
        .filter(organization_id=organization_id, public_id=endpoint_id)
        .first()
    )
    if endpoint is None or not webhook_endpoint_within(endpoint, signals=signals):
        raise not_found
    return endpoint


def webhook_endpoint_list(
    *,
    organization_id: int,
    limit: int,
    cursor: str | None = None,
    signals: frozenset[str] | None = None,
) -> WebhookEndpointPage:
    """A page of the organization's endpoints, newest first by (created_at, id); only those
    within `signals` (an API key's allow-list, see webhook_endpoint_within) when given."""
    rows = WebhookEndpoint.objects.filter(organization_id=organization_id)
    if signals is not None:
        # The filter is a JSON list of ids: decided here, over the organization's endpoints
        # (a handful), then a plain `pk IN` for the page.
        allowed = _signal_ids(organization_id, signals)
        within = [
            pk
            for pk, wanted in rows.values_list("pk", "signal_ids")
            if wanted and set(wanted) <= allowed
        ]
        rows = rows.filter(pk__in=within)
    page, next_cursor = keyset_page(
        rows,
        organization_id=organization_id,
        cursor=cursor,
        limit=limit,
        salt=_ENDPOINT_CURSOR_SALT,
        order_field="created_at",
    )
    return WebhookEndpointPage(endpoints=page, next_cursor=next_cursor)


def webhook_signal_slugs(endpoints: list[WebhookEndpoint]) -> dict[int, list[str]]:
    """Each endpoint's signal filter as the signals' slugs now (one query for a whole page)."""
    wanted = {signal_id for endpoint in endpoints for signal_id in endpoint.signal_ids}
    slugs = dict(Signal.objects.filter(pk__in=wanted).values_list("pk", "slug")) if wanted else {}
    return {
        endpoint.pk: sorted(slugs[i] for i in endpoint.signal_ids if i in slugs)
        for endpoint in endpoints
    }


def webhook_delivery_get(
    *, organization_id: int, delivery_id: str, signals: frozenset[str] | None = None
) -> WebhookDelivery:
    """The organization's delivery with this `whevt_` id; foreign, unknown, malformed or of an
    endpoint outside `signals` (an API key's allow-list) is 404."""
    not_found = NotFound(
        f"Webhook delivery not found: {delivery_id}", code="webhook_delivery_not_found"
    )
    matched = _DELIVERY_ID.match(delivery_id)
    if matched is None:
        raise not_found
    delivery = WebhookDelivery.objects.filter(
        organization_id=organization_id, pk=uuid.UUID(hex=matched.group(1))
    ).first()
    if delivery is None:
        raise not_found
    if signals is not None:
        endpoint = WebhookEndpoint.objects.filter(pk=delivery.endpoint_id).first()
        if endpoint is None or not webhook_endpoint_within(endpoint, signals=signals):
            raise not_found
        if not _deliveries_within(WebhookDelivery.objects.filter(pk=delivery.pk), signals):
            raise not_found
    return delivery


def _deliveries_within(
    rows: QuerySet[WebhookDelivery], signals: frozenset[str]
) -> QuerySet[WebhookDelivery]:
    """The deliveries an allow-listed key may see: pings, and those of an event of an allowed
    signal. The endpoint's filter today is not enough: it may have named other signals when
    older deliveries were made, and their bodies carry those events' data."""
    allowed = Event.objects.filter(pk=OuterRef("event_id"), signal__slug__in=signals)
    return rows.filter(Q(event_id__isnull=True) | Exists(allowed))


def webhook_delivery_list(
    *,
    endpoint: WebhookEndpoint,
    filters: WebhookDeliveryFilters,
    limit: int,
    cursor: str | None = None,
    signals: frozenset[str] | None = None,
) -> WebhookDeliveryPage:
    """A page of the endpoint's deliveries, newest first by (created_at, id); only those within
    `signals` (an API key's allow-list) when given."""
    rows = WebhookDelivery.objects.filter(endpoint=endpoint)
    if signals is not None:
        rows = _deliveries_within(rows, signals)
    if filters.status is not None:
        rows = rows.filter(status=filters.status)
    if filters.type is not None:
        rows = rows.filter(type=filters.type)
    page, next_cursor = keyset_page(
        rows,
        organization_id=endpoint.organization_id,
        # Each endpoint's list is its own: a cursor of one endpoint's is refused for another's.
        cursor=cursor,
        limit=limit,
        salt=f"{_DELIVERY_CURSOR_SALT}:{endpoint.pk}",
        order_field="created_at",
    )
    return WebhookDeliveryPage(deliveries=page, next_cursor=next_cursor)
