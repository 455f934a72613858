"""The admin dashboard: per-signal event counts, queue backlog and processing latency.

Every query is bounded and filtered by organization first, so it is served by the
`event_org_received` index (organization, -received_at) or `event_status_received`:
- counts are grouped by the hour / day the event *arrived* (`received_at`); "completed",
  "failed" and "queued" are the current status of the events that arrived in that bucket.
  `processed_at` has no index, and bucketing by it would scan every completed event;
- backlog counts stop at `BACKLOG_COUNT_CAP` ("more than 10000"): an exact count of a huge
  backlog is what an operator runs by hand (docs/operations.md), not what every page pays for;
- latency percentiles come from the latest `LATENCY_SAMPLE_SIZE` completed events that arrived
  in the last 24 h: `percentile_cont` over that sample in the database on PostgreSQL, the same
  interpolation in Python elsewhere.

The page costs the same handful of queries however many signals the organization has.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import (
    Aggregate,
    Case,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    QuerySet,
    Sum,
    When,
)
from django.db.models.functions import TruncDay, TruncHour
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from bigmind.admin_tenancy import admin_organizations
from events_app import models as event_models
from events_app.models import Event, EventStatus
from signals_app.models import Organization, Signal

HOURS = 24
DAYS = 30
LATENCY_SAMPLE_SIZE = 5_000
BACKLOG_COUNT_CAP = 10_000
ORGANIZATION_LIST_LIMIT = 500


# --- Selectors --------------------------------------------------------------------------------
@dataclass
class Bucket:
    start: datetime
    completed: int = 0
    failed: int = 0
    queued: int = 0  # pending or processing now
    rejected: int | None = None  # None: rejections are not recorded (no RejectedEvent model)

    @property
    def ingested(self) -> int:
        return self.completed + self.failed + self.queued


@dataclass
class Totals:
    ingested: int = 0
    completed: int = 0
    failed: int = 0
    queued: int = 0
    rejected: int | None = None

    @classmethod
    def of(cls, buckets: Iterable[Bucket], *, rejections_known: bool) -> Totals:
        totals = cls(rejected=0 if rejections_known else None)
        for bucket in buckets:
            totals.ingested += bucket.ingested
            totals.completed += bucket.completed
            totals.failed += bucket.failed
            totals.queued += bucket.queued
            if totals.rejected is not None and bucket.rejected is not None:
                totals.rejected += bucket.rejected
        return totals


UNKNOWN_SIGNALS = ":unknown"  # not a slug: a slug has no colon
OVER_CAP = ":over-cap"


@dataclass
class SignalActivity:
    row_id: str  # the signal's slug, or UNKNOWN_SIGNALS / OVER_CAP for the rejection-only rows
    name: str
    active: bool
    hourly: list[Bucket]
    daily: list[Bucket]
    rejections_known: bool
    totals_24h: Totals = field(init=False)
    totals_30d: Totals = field(init=False)

    def __post_init__(self) -> None:
        self.totals_24h = Totals.of(self.hourly, rejections_known=self.rejections_known)
        self.totals_30d = Totals.of(self.daily, rejections_known=self.rejections_known)

    @property
    def is_signal(self) -> bool:
        return not self.row_id.startswith(":")


def duration_text(value: timedelta | None) -> str:
    """A duration as people read it: "850 ms", "4.9 s", "3 min 20 s", "2 h 5 min", "3 d 4 h"."""
    if value is None:
        return "n/a"
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@dataclass(frozen=True)
class Backlog:
    pending: int
    processing: int
    oldest_pending_at: datetime | None
    oldest_pending_age: timedelta | None
    cap: int

    @property
    def pending_capped(self) -> bool:
        return self.pending > self.cap

    @property
    def processing_capped(self) -> bool:
        return self.processing > self.cap

    @property
    def oldest_pending_age_text(self) -> str:
        return duration_text(self.oldest_pending_age)


@dataclass(frozen=True)
class Latency:
    sample_size: int
    p50: timedelta | None
    p95: timedelta | None
    max: timedelta | None
    # How the percentiles were computed, for tests and debugging; the page explains what they
    # mean instead (templates/admin/dashboard.html).
    method: str

    @property
    def texts(self) -> dict[str, str]:
        return {
            "p50": duration_text(self.p50),
            "p95": duration_text(self.p95),
            "max": duration_text(self.max),
        }


@dataclass(frozen=True)
class Dashboard:
    organization: Organization
    now: datetime
    hours_since: datetime
    days_since: datetime
    signals: list[SignalActivity]
    backlog: Backlog
    latency: Latency
    rejections_known: bool


def _rejection_models() -> tuple[Any, Any]:
    """events_app.models.RejectedEvent and RejectionOverflow where they exist: without the
    first, rejections read "n/a"."""
    return (
        getattr(event_models, "RejectedEvent", None),
        getattr(event_models, "RejectionOverflow", None),
    )


def _window_starts(now: datetime) -> tuple[datetime, datetime]:
    now = now.astimezone(UTC)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    today = this_hour.replace(hour=0)
    return this_hour - timedelta(hours=HOURS - 1), today - timedelta(days=DAYS - 1)


# {((group-by values...), bucket start): count}
Counts = dict[tuple[tuple[Any, ...], datetime], int]


def _bucketed_counts(
    queryset: QuerySet[Any],
    *,
    time_field: str,
    keys: tuple[str, ...],
    total: Aggregate,
    hours_since: datetime,
) -> tuple[Counts, Counts]:
    """Hourly (last 24 h) and daily counts in one GROUP BY over the caller's 30-day range: the
    hour is NULL outside the last 24 h, so those rows group by day alone."""
    last_24h = Case(
        When(**{f"{time_field}__gte": hours_since}, then=F(time_field)),
        output_field=DateTimeField(),
    )
    rows = (
        queryset.order_by()
        .annotate(day=TruncDay(time_field, tzinfo=UTC), hour=TruncHour(last_24h, tzinfo=UTC))
        .values(*keys, "day", "hour")
        .annotate(n=total)
    )
    hourly: Counts = defaultdict(int)
    daily: Counts = defaultdict(int)
    for row in rows:
        key = tuple(row[name] for name in keys)
        daily[(key, row["day"].astimezone(UTC))] += row["n"]
        if row["hour"] is not None:
            hourly[(key, row["hour"].astimezone(UTC))] += row["n"]
    return hourly, daily


def _series(
    starts: list[datetime],
    *,
    events: Counts,
    signal_id: int | None,
    rejected: Counts | None,
    rejected_keys: Iterable[tuple[Any, ...]],
) -> list[Bucket]:
    rejected_keys = list(rejected_keys)
    buckets = []
    for start in starts:

        def count(status: str, start: datetime = start) -> int:
            return events.get(((signal_id, status), start), 0)

        bucket = Bucket(
            start=start,
            completed=count(EventStatus.COMPLETED),
            failed=count(EventStatus.FAILED),
            queued=count(EventStatus.PENDING) + count(EventStatus.PROCESSING),
        )
        if rejected is not None:
            bucket.rejected = sum(rejected.get((key, start), 0) for key in rejected_keys)
        buckets.append(bucket)
    return buckets


def dashboard_signal_activity(
    *, organization: Organization, now: datetime
) -> tuple[list[SignalActivity], bool]:
    """Per signal, ingested / completed / failed / queued / rejected counts per hour for the last
    24 h and per day for the last 30 days, by arrival time; rejections naming no signal of the
    organization, and those over the per-minute storage cap, in a row each. Four queries
    whatever the number of signals. The flag says whether rejections are recorded at all.
    """
    hours_since, days_since = _window_starts(now)
    hour_starts = [hours_since + timedelta(hours=i) for i in range(HOURS)]
    day_starts = [days_since + timedelta(days=i) for i in range(DAYS)]
    signals = list(
        Signal.objects.filter(organization=organization)
        .only("id", "slug", "name", "active")
        .order_by("slug")
    )
    events_hourly, events_daily = _bucketed_counts(
        Event.objects.filter(organization=organization, received_at__gte=days_since),
        time_field="received_at",
        keys=("signal_id", "status"),
        total=Count("pk"),
        hours_since=hours_since,
    )
    rejected_model, overflow_model = _rejection_models()
    known = rejected_model is not None
    rejected_hourly: Counts | None = None
    rejected_daily: Counts | None = None
    overflow_hourly: Counts = {}
    overflow_daily: Counts = {}
    if rejected_model is not None:
        rejected_hourly, rejected_daily = _bucketed_counts(
            rejected_model.objects.filter(organization=organization, received_at__gte=days_since),
            time_field="received_at",
            keys=("signal_slug",),
            total=Count("pk"),
            hours_since=hours_since,
        )
        if overflow_model is not None:
            overflow_hourly, overflow_daily = _bucketed_counts(
                overflow_model.objects.filter(organization=organization, minute__gte=days_since),
                time_field="minute",
                keys=(),
                total=Sum("count"),
                hours_since=hours_since,
            )

    def activity(
        row_id: str,
        name: str,
        *,
        active: bool,
        signal_id: int | None,
        rejected: tuple[Counts | None, Counts | None],
        rejected_keys: Iterable[tuple[Any, ...]],
    ) -> SignalActivity:
        rejected_keys = list(rejected_keys)
        return SignalActivity(
            row_id=row_id,
            name=name,
            active=active,
            hourly=_series(
                hour_starts,
                events=events_hourly,
                signal_id=signal_id,
                rejected=rejected[0],
                rejected_keys=rejected_keys,
            ),
            daily=_series(
                day_starts,
                events=events_daily,
                signal_id=signal_id,
                rejected=rejected[1],
                rejected_keys=rejected_keys,
            ),
            rejections_known=known,
        )

    rows = [
        activity(
            signal.slug,
            signal.name,
            active=signal.active,
            signal_id=signal.pk,
            rejected=(rejected_hourly, rejected_daily),
            rejected_keys=[(signal.slug,)],
        )
        for signal in signals
    ]
    # Requests naming a signal the organization does not have share one row, so a client
    # sending random slugs cannot grow the page.
    own = {signal.slug for signal in signals}
    unknown = {key for key, _ in rejected_daily or {} if key[0] not in own}
    if unknown:
        rows.append(
            activity(
                UNKNOWN_SIGNALS,
                "Rejected: a signal this organization does not have",
                active=False,
                signal_id=None,
                rejected=(rejected_hourly, rejected_daily),
                rejected_keys=unknown,
            )
        )
    if any(overflow_daily.values()):
        rows.append(
            activity(
                OVER_CAP,
                "Rejected over the per-minute storage cap (signal not recorded)",
                active=False,
                signal_id=None,
                rejected=(overflow_hourly, overflow_daily),
                rejected_keys=[()],
            )
        )
    return rows, known


def dashboard_backlog(*, organization: Organization, now: datetime) -> Backlog:
    """Pending and processing counts now (each stops at `BACKLOG_COUNT_CAP` + 1) and the age of
    the oldest pending event. Three queries."""
    events = Event.objects.filter(organization=organization).order_by()

    def capped_count(status: str) -> int:
        # Counting a sliced queryset is COUNT(*) over a LIMITed subquery.
        return events.filter(status=status).values("pk")[: BACKLOG_COUNT_CAP + 1].count()

    oldest = (
        events.filter(status=EventStatus.PENDING)
        .order_by("received_at")
        .values_list("received_at", flat=True)
        .first()
    )
    return Backlog(
        pending=capped_count(EventStatus.PENDING),
        processing=capped_count(EventStatus.PROCESSING),
        oldest_pending_at=oldest,
        oldest_pending_age=max(now - oldest, timedelta(0)) if oldest is not None else None,
        cap=BACKLOG_COUNT_CAP,
    )


def percentile_cont(values: list[timedelta], fraction: float) -> timedelta | None:
    """PostgreSQL's `percentile_cont`: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def dashboard_latency(*, organization: Organization, now: datetime) -> Latency:
    """p50 / p95 / max of processed_at - received_at over the latest `LATENCY_SAMPLE_SIZE`
    completed events that arrived in the last 24 h. One query."""
    sample = (
        Event.objects.filter(
            organization=organization,
            received_at__gte=now - timedelta(hours=HOURS),
            status=EventStatus.COMPLETED,
            processed_at__isnull=False,
        )
        .annotate(
            latency=ExpressionWrapper(
                F("processed_at") - F("received_at"), output_field=DurationField()
            )
        )
        # Newest first along the (organization, -received_at) index: the scan stops at the cap.
        .order_by("-received_at")
    )
    if connection.vendor == "postgresql":
        sql, params = sample.values("latency")[:LATENCY_SAMPLE_SIZE].query.sql_with_params()
        with connection.cursor() as cursor:
            # `sql` is Django's own compiled query; every value is in `params`.
            cursor.execute(
                "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency),"  # noqa: S608
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY latency), max(latency)"
                f" FROM ({sql}) AS sample",
                params,
            )
            size, p50, p95, longest = cursor.fetchone()
        return Latency(
            sample_size=size,
            p50=p50,
            p95=p95,
            max=longest,
            method="percentile_cont in PostgreSQL",
        )
    values = [
        latency
        for latency in sample.values_list("latency", flat=True)[:LATENCY_SAMPLE_SIZE]
        if latency is not None
    ]
    return Latency(
        sample_size=len(values),
        p50=percentile_cont(values, 0.5),
        p95=percentile_cont(values, 0.95),
        max=max(values) if values else None,
        method="computed in Python (percentile_cont's interpolation)",
    )


def dashboard_get(*, organization: Organization, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    hours_since, days_since = _window_starts(now)
    signals, known = dashboard_signal_activity(organization=organization, now=now)
    return Dashboard(
        organization=organization,
        now=now,
        hours_since=hours_since,
        days_since=days_since,
        signals=signals,
        backlog=dashboard_backlog(organization=organization, now=now),
        latency=dashboard_latency(organization=organization, now=now),
        rejections_known=known,
    )


# --- Charts (inline SVG, drawn on the server) -------------------------------------------------
SLOT = 10  # px per bucket
BAR = 8
PLOT_HEIGHT = 60
TOP = 12  # room for the max label
BOTTOM = 14  # room for the time labels
SEGMENTS = ("completed", "failed", "queued")  # bottom to top; rejected goes on top of them


@dataclass(frozen=True)
class Rect:
    x: int
    y: float
    height: float
    css: str


@dataclass(frozen=True)
class Column:
    x: int
    title: str
    rects: list[Rect]


@dataclass(frozen=True)
class Chart:
    label: str
    width: int
    height: int
    baseline: int
    peak: int
    columns: list[Column]
    first_label: str
    last_label: str


def chart_of(buckets: list[Bucket], *, hourly: bool) -> Chart:
    """Stacked bars, one per bucket: completed, failed and queued (together: ingested), then
    rejected on top. One scale per chart; the peak is labelled."""
    peak = max((b.ingested + (b.rejected or 0) for b in buckets), default=0)
    scale = PLOT_HEIGHT / peak if peak else 0.0
    baseline = TOP + PLOT_HEIGHT
    label_format = "%H:%M" if hourly else "%b %d"
    columns = []
    for index, bucket in enumerate(buckets):
        x = index * SLOT + 1
        y = float(baseline)
        rects = []
        parts = [(css, getattr(bucket, css)) for css in SEGMENTS]
        parts.append(("rejected", bucket.rejected or 0))
        for css, value in parts:
            if value:
                height = value * scale
                y -= height
                rects.append(Rect(x=x, y=round(y, 2), height=round(height, 2), css=css))
        when = bucket.start.strftime("%Y-%m-%d %H:00" if hourly else "%Y-%m-%d")
        rejected = "n/a" if bucket.rejected is None else str(bucket.rejected)
        title = (
            f"{when} UTC: ingested {bucket.ingested} (completed {bucket.completed}, "
            f"failed {bucket.failed}, queued {bucket.queued}), rejected {rejected}"
        )
        columns.append(Column(x=x, title=title, rects=rects))
    return Chart(
        label="per hour, last 24 h" if hourly else "per day, last 30 days",
        width=len(buckets) * SLOT + 2,
        height=baseline + BOTTOM,
        baseline=baseline,
        peak=peak,
        columns=columns,
        first_label=buckets[0].start.strftime(label_format) if buckets else "",
        last_label=buckets[-1].start.strftime(label_format) if buckets else "",
    )


def chart_svg(chart: Chart, *, name: str) -> SafeString:
    """The chart as inline SVG markup. Built here rather than in the template: a template loop
    over ~2,000 rects per page costs more than every query of the page together."""
    parts = [
        f'<svg class="chart" width="{chart.width}" height="{chart.height}"'
        f' viewBox="0 0 {chart.width} {chart.height}" role="img"'
        f' aria-label="{escape(name)}: {escape(chart.label)}, peak {chart.peak}">'
        f'<text x="0" y="9">{chart.peak}</text>'
    ]
    for column in chart.columns:
        parts.append(
            f"<g><title>{escape(column.title)}</title>"
            f'<rect class="hit" x="{column.x}" y="{TOP}" width="{BAR}" height="{PLOT_HEIGHT}"/>'
        )
        parts.extend(
            f'<rect class="{rect.css}" x="{rect.x}" y="{rect.y}" width="{BAR}"'
            f' height="{rect.height}"/>'
            for rect in column.rects
        )
        parts.append("</g>")
    parts.append(
        f'<line class="axis" x1="0" y1="{chart.baseline}" x2="{chart.width}"'
        f' y2="{chart.baseline}"/>'
        f'<text x="0" y="{chart.height}">{escape(chart.first_label)}</text>'
        f'<text x="{chart.width}" y="{chart.height}" text-anchor="end">'
        f"{escape(chart.last_label)}</text></svg>"
    )
    # Every interpolated text above is escaped; the rest are numbers and fixed class names.
    return mark_safe("".join(parts))  # noqa: S308


# --- Views ------------------------------------------------------------------------------------
def _require_event_view_permission(request: HttpRequest) -> None:
    # admin_view has already required an active staff user; the numbers are events' numbers.
    if not request.user.has_perm("events_app.view_event"):
        raise PermissionDenied


def dashboard_index_view(request: HttpRequest) -> HttpResponse:
    _require_event_view_permission(request)
    # Only the organizations the user may see (a staff user limited to one: that one).
    organizations = list(
        admin_organizations(request)
        .order_by("slug")
        .only("slug", "name")[: ORGANIZATION_LIST_LIMIT + 1]
    )
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "organizations": organizations[:ORGANIZATION_LIST_LIMIT],
        "more_organizations": len(organizations) > ORGANIZATION_LIST_LIMIT,
        "limit": ORGANIZATION_LIST_LIMIT,
    }
    return render(request, "admin/dashboard.html", context)


def dashboard_organization_view(request: HttpRequest, slug: str) -> HttpResponse:
    _require_event_view_permission(request)
    # Another organization's page is "not found", like one that does not exist.
    organization = get_object_or_404(admin_organizations(request), slug=slug)
    dashboard = dashboard_get(organization=organization)
    rows = [
        {
            "signal": signal,
            "charts": [
                chart_svg(chart_of(signal.hourly, hourly=True), name=signal.name),
                chart_svg(chart_of(signal.daily, hourly=False), name=signal.name),
            ],
        }
        for signal in dashboard.signals
    ]
    context = {
        **admin.site.each_context(request),
        "title": f"Dashboard: {organization.name or organization.slug}",
        "organization": organization,
        "dashboard": dashboard,
        "rows": rows,
        "latency_sample_limit": f"{LATENCY_SAMPLE_SIZE:,}",
    }
    return render(request, "admin/dashboard.html", context)


# Mounted at admin/dashboard/ in bigmind/urls.py, before admin.site.urls (whose catch-all
# would answer first). admin_view: staff only, anyone else goes to the admin login.
urlpatterns: list[URLPattern] = [
    path("", admin.site.admin_view(dashboard_index_view), name="index"),
    path("<slug:slug>/", admin.site.admin_view(dashboard_organization_view), name="organization"),
]
