"""The admin dashboard (/admin/dashboard/): numbers, charts, access, and a bounded cost."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events_app import models as event_models
from events_app.dashboard.charts import chart_of
from events_app.dashboard.selectors import (
    dashboard_backlog,
    dashboard_get,
    dashboard_latency,
    duration_text,
    percentile_cont,
)
from events_app.models import CrmRecord, EventStatus
from signals_app.models import Organization, OrganizationMembership
from tests.conftest import Tenant, bulk_insert_events, on_postgres
from tests.events_app.test_read_api import store_event

HAS_REJECTIONS = hasattr(event_models, "RejectedEvent")


def page(client: Client, slug: str = "acme") -> Any:
    return client.get(f"/admin/dashboard/{slug}/")


def signal_row(html: str, slug: str) -> str:
    """The HTML of one signal's row (its charts and totals)."""
    start = html.index(f'data-signal="{slug}"')
    end = html.find('<tr class="signal"', start)
    return html[start : end if end != -1 else len(html)]


def cell(row: str, name: str) -> str:
    match = re.search(rf'class="{name}">([^<]*)<', row)
    assert match, name
    return match.group(1)


@pytest.fixture
def fixture_events(tenant: Tenant, make_tenant: Any) -> datetime:
    """A small, known history for acme (and noise in another organization)."""
    now = timezone.now()
    viewed = tenant.signal("page-viewed")
    calls = tenant.signal("api-calls", type="metric")
    tenant.signal("quiet-signal")

    def completed(at: datetime, seconds: float) -> None:
        store_event(
            tenant,
            viewed,
            received_at=at,
            status=EventStatus.COMPLETED,
            processed_at=at + timedelta(seconds=seconds),
        )

    two_hours_ago = now - timedelta(hours=2)
    completed(two_hours_ago, 3)
    completed(two_hours_ago, 5)
    store_event(tenant, viewed, received_at=two_hours_ago, status=EventStatus.FAILED)
    store_event(tenant, viewed, received_at=now - timedelta(hours=1), status=EventStatus.PENDING)
    completed(now - timedelta(days=3), 60)  # in 30 days, not in 24 h (nor in latency)
    completed(now - timedelta(days=40), 1)  # in neither window
    store_event(tenant, calls, received_at=now - timedelta(hours=5), status=EventStatus.PROCESSING)

    other = make_tenant("globex")
    noise = other.signal("page-viewed")
    for status in EventStatus.values:
        store_event(other, noise, received_at=now - timedelta(hours=1), status=status)
    return now


def test_staff_see_each_signals_counts_for_24_hours_and_30_days(
    staff: Client, fixture_events: datetime
) -> None:
    response = page(staff)

    assert response.status_code == 200
    html = response.content.decode()
    viewed = signal_row(html, "page-viewed")
    assert [cell(viewed, f"{kind}-24h") for kind in ("ingested", "completed", "failed")] == [
        "4",
        "2",
        "1",
    ]
    assert cell(viewed, "queued-24h") == "1"
    assert [cell(viewed, f"{kind}-30d") for kind in ("ingested", "completed", "failed")] == [
        "5",
        "3",
        "1",
    ]
    calls = signal_row(html, "api-calls")
    assert (cell(calls, "ingested-24h"), cell(calls, "queued-24h")) == ("1", "1")
    quiet = signal_row(html, "quiet-signal")
    assert (cell(quiet, "ingested-24h"), cell(quiet, "ingested-30d")) == ("0", "0")
    assert 'data-signal=":unknown"' not in html  # no rejections, no row for them


def test_each_bar_reports_its_bucket_in_a_tooltip(staff: Client, fixture_events: datetime) -> None:
    html = page(staff).content.decode()
    bucket = (fixture_events - timedelta(hours=2)).astimezone(UTC)
    viewed = signal_row(html, "page-viewed")

    assert f"{bucket:%Y-%m-%d %H}:00 UTC: ingested 3 (completed 2, failed 1, queued 0)" in viewed
    assert viewed.count("<svg") == 2
    assert viewed.count("<title>") == 24 + 30


def test_the_backlog_shows_pending_and_processing_and_the_oldest_pending_age(
    staff: Client, fixture_events: datetime
) -> None:
    response = page(staff)
    backlog = response.context["dashboard"].backlog

    assert (backlog.pending, backlog.processing) == (1, 1)
    assert timedelta(hours=1) <= backlog.oldest_pending_age < timedelta(hours=1, minutes=1)
    html = response.content.decode()
    assert re.search(r"Pending</th><td>1</td>", html)
    assert re.search(r"Processing</th><td>1</td>", html)
    assert "1 h 0 min old" in html


def test_latency_percentiles_cover_events_completed_in_the_last_24_hours(
    staff: Client, fixture_events: datetime
) -> None:
    latency = page(staff).context["dashboard"].latency

    assert latency.sample_size == 2
    assert latency.p50 == timedelta(seconds=4)
    assert latency.p95 == timedelta(seconds=4.9)
    assert latency.max == timedelta(seconds=5)
    assert ("PostgreSQL" in latency.method) is on_postgres()


def test_durations_read_in_the_largest_sensible_unit() -> None:
    assert duration_text(None) == "n/a"
    assert duration_text(timedelta(milliseconds=850)) == "850 ms"
    assert duration_text(timedelta(seconds=4.9)) == "4.9 s"
    assert duration_text(timedelta(minutes=3, seconds=20)) == "3 min 20 s"
    assert duration_text(timedelta(hours=2, minutes=5, seconds=9)) == "2 h 5 min"
    assert duration_text(timedelta(days=3, hours=4, minutes=1)) == "3 d 4 h"


def test_percentile_cont_interpolates_like_postgresql() -> None:
    values = [timedelta(seconds=s) for s in (10, 1, 4, 2)]

    assert percentile_cont(values, 0.5) == timedelta(seconds=3)
    assert percentile_cont(values, 0.95) == timedelta(seconds=9.1)
    assert percentile_cont(values, 1.0) == timedelta(seconds=10)
    assert percentile_cont([timedelta(seconds=7)], 0.95) == timedelta(seconds=7)
    assert percentile_cont([], 0.5) is None


def test_the_backlog_count_stops_at_its_cap(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("events_app.dashboard.selectors.BACKLOG_COUNT_CAP", 3)
    signal = tenant.signal("page-viewed")
    now = timezone.now()
    for minutes in range(6):
        store_event(tenant, signal, received_at=now - timedelta(minutes=minutes))

    backlog = dashboard_backlog(organization=tenant.organization, now=now)

    assert backlog.pending == 4  # cap + 1: "more than 3"
    assert backlog.pending_capped
    assert not backlog.processing_capped
    assert backlog.oldest_pending_age == timedelta(minutes=5)


def test_an_organization_without_events_shows_empty_charts(staff: Client, tenant: Tenant) -> None:
    tenant.signal("page-viewed")

    response = page(staff)

    assert response.status_code == 200
    dashboard = response.context["dashboard"]
    assert dashboard.backlog.oldest_pending_age is None
    assert dashboard.latency.sample_size == 0
    assert dashboard.latency.p50 is None
    assert "<svg" in response.content.decode()


def test_rejections_read_n_a_where_they_are_not_recorded(
    staff: Client, fixture_events: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deployment without events_app.models.RejectedEvent.
    monkeypatch.delattr(event_models, "RejectedEvent")

    html = page(staff).content.decode()

    assert cell(signal_row(html, "page-viewed"), "rejected-24h") == "n/a"
    assert "rejections are not recorded" in html


def reject(tenant: Tenant, slug: str, at: datetime) -> None:
    model: Any = getattr(event_models, "RejectedEvent")  # noqa: B009
    model.objects.create(
        organization=tenant.organization,
        signal_slug=slug,
        reason="signal_not_found",
        message=f"Signal not found: {slug}",
        body_bytes=2,
        received_at=at,
    )


@pytest.mark.skipif(not HAS_REJECTIONS, reason="needs events_app.models.RejectedEvent")
def test_rejections_are_counted_per_signal_and_unknown_slugs_share_one_row(
    staff: Client, fixture_events: datetime, tenant: Tenant
) -> None:
    now = fixture_events
    reject(tenant, "page-viewed", now - timedelta(hours=1))
    reject(tenant, "page-viewed", now - timedelta(days=2))
    reject(tenant, "no-such-signal", now - timedelta(hours=1))
    reject(tenant, "another-typo", now - timedelta(hours=3))
    reject(tenant, "another-typo", now - timedelta(days=31))  # outside both windows
    other = Organization.objects.get(slug="globex")
    reject(Tenant(other, tenant.api_key, ""), "page-viewed", now - timedelta(hours=1))

    html = page(staff).content.decode()

    viewed = signal_row(html, "page-viewed")
    assert (cell(viewed, "rejected-24h"), cell(viewed, "rejected-30d")) == ("1", "2")
    assert cell(viewed, "ingested-24h") == "4"  # rejections are not ingested events
    unknown = signal_row(html, ":unknown")
    assert (cell(unknown, "rejected-24h"), cell(unknown, "rejected-30d")) == ("2", "2")
    assert cell(signal_row(html, "quiet-signal"), "rejected-30d") == "0"
    assert 'data-signal=":over-cap"' not in html


@pytest.mark.skipif(not HAS_REJECTIONS, reason="needs events_app.models.RejectionOverflow")
def test_rejections_over_the_storage_cap_have_a_row_of_their_own(
    staff: Client, tenant: Tenant
) -> None:
    tenant.signal("page-viewed")
    overflow: Any = getattr(event_models, "RejectionOverflow")  # noqa: B009
    minute = timezone.now().replace(second=0, microsecond=0)
    overflow.objects.create(
        organization=tenant.organization, minute=minute - timedelta(hours=1), count=40
    )
    overflow.objects.create(
        organization=tenant.organization, minute=minute - timedelta(days=3), count=2
    )

    html = page(staff).content.decode()

    over_cap = signal_row(html, ":over-cap")
    assert (cell(over_cap, "rejected-24h"), cell(over_cap, "rejected-30d")) == ("40", "42")
    assert 'data-signal=":unknown"' not in html


def test_the_page_is_inline_svg_with_nothing_from_another_host(
    staff: Client, fixture_events: datetime
) -> None:
    html = page(staff).content.decode()

    assert "<svg" in html
    assert not re.search(r"<script(?![^>]*\bsrc=\"/static/)[^>]*\bsrc=", html)
    external = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//""")
    assert not external.search(html)
    assert 'id="site-name"' in html


def test_the_chooser_lists_organizations_with_links(staff: Client, make_tenant: Any) -> None:
    make_tenant("acme")
    make_tenant("globex")

    response = staff.get("/admin/dashboard/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="/admin/dashboard/acme/"' in html
    assert 'href="/admin/dashboard/globex/"' in html


def test_the_admin_index_links_to_the_dashboard(staff: Client) -> None:
    response = staff.get("/admin/")

    assert response.status_code == 200
    assert 'href="/admin/dashboard/"' in response.content.decode()
    assert "app-signals_app" in response.content.decode()  # Django's own index is still there


@pytest.mark.parametrize("path", ["/admin/dashboard/", "/admin/dashboard/acme/"])
def test_visitors_who_are_not_staff_are_sent_to_the_admin_login(
    db: None, tenant: Tenant, path: str
) -> None:
    user = get_user_model().objects.create_user("someone", "s@example.com", "pw-123456")
    member = Client()
    member.force_login(user)

    for client in (Client(), member):
        response = client.get(path)

        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")


def test_staff_without_permission_to_view_events_are_refused(db: None, tenant: Tenant) -> None:
    user = get_user_model().objects.create_user("clerk", "c@example.com", "pw", is_staff=True)
    client = Client()
    client.force_login(user)

    assert client.get("/admin/dashboard/acme/").status_code == 403
    assert 'href="/admin/dashboard/"' not in client.get("/admin/").content.decode()

    user.user_permissions.add(Permission.objects.get(codename="view_event"))
    client.force_login(get_user_model().objects.get(pk=user.pk))
    # Staff without an organization see no organization's data at all.
    assert client.get("/admin/dashboard/acme/").status_code == 404
    OrganizationMembership.objects.create(user=user, organization=tenant.organization)
    assert client.get("/admin/dashboard/acme/").status_code == 200


def test_an_unknown_organization_is_not_found(staff: Client, tenant: Tenant) -> None:
    assert staff.get("/admin/dashboard/no-such-org/").status_code == 404


def test_the_page_costs_the_same_few_queries_however_many_signals(
    staff: Client, tenant: Tenant, django_assert_max_num_queries: Any
) -> None:
    now = timezone.now()
    first = tenant.signal("signal-0")
    store_event(tenant, first, received_at=now - timedelta(hours=1))
    page(staff)  # warm-up: session and user caches

    with CaptureQueriesContext(connection) as one_signal:
        assert page(staff).status_code == 200
    for index in range(1, 25):
        signal = tenant.signal(f"signal-{index}")
        store_event(tenant, signal, received_at=now - timedelta(days=index % 29, hours=1))

    with django_assert_max_num_queries(12):
        response = page(staff)
    assert response.status_code == 200
    assert len(response.context["dashboard"].signals) == 25
    with CaptureQueriesContext(connection) as many_signals:
        page(staff)
    assert len(many_signals) == len(one_signal)


def test_the_selectors_use_the_given_time(tenant: Tenant) -> None:
    signal = tenant.signal("page-viewed")
    now = datetime(2026, 3, 16, 12, 30, tzinfo=UTC)
    store_event(tenant, signal, received_at=datetime(2026, 3, 15, 12, 59, tzinfo=UTC))  # 24 h
    store_event(tenant, signal, received_at=datetime(2026, 3, 15, 11, 59, tzinfo=UTC))  # 30 d
    store_event(tenant, signal, received_at=datetime(2026, 2, 15, 0, 0, tzinfo=UTC))  # 30 d
    store_event(tenant, signal, received_at=datetime(2026, 2, 14, 23, 59, tzinfo=UTC))  # neither

    dashboard = dashboard_get(organization=tenant.organization, now=now)

    (activity,) = dashboard.signals
    assert activity.hourly[0].start == datetime(2026, 3, 15, 13, 0, tzinfo=UTC)
    assert activity.hourly[-1].start == datetime(2026, 3, 16, 12, 0, tzinfo=UTC)
    assert activity.daily[0].start == datetime(2026, 2, 15, tzinfo=UTC)
    assert activity.daily[-1].start == datetime(2026, 3, 16, tzinfo=UTC)
    # The 24 h window is the current hour and the 23 before it.
    assert (activity.totals_24h.ingested, activity.totals_30d.ingested) == (0, 3)
    assert dashboard.latency.sample_size == 0
    assert dashboard_latency(organization=tenant.organization, now=now).p95 is None


def test_a_chart_stacks_statuses_and_scales_to_its_peak(tenant: Tenant) -> None:
    signal = tenant.signal("page-viewed")
    # Half past an hour (not in the future): "a minute ago" must be in the same hourly column
    # as now, which it is not in the first minute of an hour (CI ran it at 19:00 once).
    now = timezone.now().replace(minute=30, second=0, microsecond=0)
    if now > timezone.now():
        now -= timedelta(hours=1)
    for status in (EventStatus.COMPLETED, EventStatus.COMPLETED, EventStatus.FAILED):
        store_event(tenant, signal, received_at=now - timedelta(minutes=1), status=status)

    (activity,) = dashboard_get(organization=tenant.organization, now=now).signals
    chart = chart_of(activity.hourly, hourly=True)

    assert chart.peak == 3
    last = chart.columns[-1]
    assert [rect.css for rect in last.rects] == ["completed", "failed"]
    assert [rect.height for rect in last.rects] == [40.0, 20.0]
    assert last.rects[-1].y == chart.baseline - 60
    assert all(not column.rects for column in chart.columns[:-1])


# --- 100,000 events on PostgreSQL -------------------------------------------------------------
@pytest.mark.postgres
def test_the_dashboard_answers_within_a_second_with_100000_events(
    staff: Client, tenant: Tenant
) -> None:
    if not on_postgres():
        pytest.skip("a timing on PostgreSQL: run with DATABASE_URL=postgres://...")
    now = timezone.now()
    signals = [tenant.signal(f"signal-{index}") for index in range(10)]
    record = CrmRecord.objects.create(
        organization=tenant.organization,
        type="account",
        external_id="A1",
        first_seen_at=now,
        last_seen_at=now,
    )
    # 100,000 events 25 s apart: the last 28.9 days, all in the 30-day window.
    inserted = bulk_insert_events(
        record_id=record.pk,
        signals=signals,
        count=100_000,
        now=now,
        status="CASE mod(i, 20) WHEN 0 THEN 'failed' WHEN 1 THEN 'pending'"
        " WHEN 2 THEN 'processing' ELSE 'completed' END",
        processed_at="CASE WHEN mod(i, 20) > 2 THEN t + make_interval(secs => mod(i, 7) + 0.5) END",
    )
    assert inserted == 100_000
    assert page(staff).status_code == 200  # warm-up

    started = time.perf_counter()
    response = page(staff)
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    dashboard = response.context["dashboard"]
    assert sum(signal.totals_30d.ingested for signal in dashboard.signals) == 100_000
    assert sum(signal.totals_24h.ingested for signal in dashboard.signals) in range(3_300, 3_460)
    assert dashboard.backlog.pending == 5_000
    # 17 in 20 completed among the ~3,456 that arrived in the last 24 h: under the 5,000 cap.
    assert dashboard.latency.sample_size in range(2_900, 2_960)
    assert dashboard.latency.max == timedelta(seconds=6.5)
    assert elapsed < 1.0, f"dashboard took {elapsed:.3f} s"
