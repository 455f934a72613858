"""The admin's event and CRM record pages: what processing did, shown read-only and escaped;
list filters; the reprocess action; bounded cost with 100,000 events."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from events_app.models import CrmRecord, Event, EventStatus, EventTransition
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import InsightDraft, PermanentProcessingError, processor_get
from signals_app.models import OrganizationMembership, Signal
from tests.conftest import ApiClient, Tenant, bulk_insert_events, on_postgres
from tests.events_app.test_read_api import store_event

URL = "/v1/events"
EVENTS = "/admin/events_app/event/"
RECORDS = "/admin/events_app/crmrecord/"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture(autouse=True)
def _fresh_processor() -> Iterator[None]:
    processor_get.cache_clear()
    yield
    processor_get.cache_clear()


@pytest.fixture(autouse=True)
def _no_publish() -> Iterator[None]:
    with (
        mock.patch("events_app.tasks.process_event_task.delay"),
        mock.patch("events_app.tasks.process_event_task.apply_async"),
        mock.patch("events_app.tasks.process_events_task.delay"),
    ):
        yield


class RefusingProcessor:
    """Fails every event for good, with an error that carries markup."""

    name = "refusing"
    version = "1"
    wants_context = False

    def insight(self, job: Any) -> InsightDraft:
        raise PermanentProcessingError(f"endpoint said {HOSTILE} & gave up")


@pytest.fixture
def signals(tenant: Tenant) -> dict[str, Signal]:
    return {
        "visit": tenant.signal("visit", rate_limit_per_minute=10000),
        "calls": tenant.signal(
            "calls", type="metric", aggregation="sum", period="day", rate_limit_per_minute=10000
        ),
        "health": tenant.signal("health", type="state", rate_limit_per_minute=10000),
    }


def ingest(
    api: ApiClient, signal: str, data: dict, at: datetime = T0, record: str = "acc-1"
) -> str:
    response = api.post(
        URL,
        {
            "signal": signal,
            "identity": {"type": "account", "id": record},
            "data": data,
            "timestamp": at.isoformat(),
        },
    )
    assert response.status_code == 202, response.content
    return response.json()["data"]["id"]


def processed(*ids: str) -> list[Event]:
    events_process(event_ids=list(ids))
    return [Event.objects.get(pk=event_id) for event_id in ids]


def event_page(client: Client, event: Event) -> str:
    response = client.get(f"{EVENTS}{event.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def history_rows(page: str) -> list[list[str]]:
    rows = re.findall(r'<tr class="transition">(.*?)</tr>', page, re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]


def listed(client: Client, url: str) -> list[Any]:
    response = client.get(url)
    assert response.status_code == 200, url
    assert "?e=1" not in response.get("Location", "")
    return list(response.context["cl"].result_list)


# --- The event page ---------------------------------------------------------------------------
def test_the_event_page_shows_payload_identity_status_history_attempts_and_result(
    staff: Client, api: ApiClient, signals
) -> None:
    [event] = processed(ingest(api, "visit", {"page": "/pricing", "seconds": 42}))

    page = event_page(staff, event)

    assert html.escape('"page": "/pricing"', quote=True) in page  # pretty JSON, escaped
    assert "account: acc-1" in page
    assert f"/admin/events_app/crmrecord/{event.crm_record_id}/change/" in page
    assert f"?crm_record__id__exact={event.crm_record_id}" in page
    assert [row[0] for row in history_rows(page)] == ["pending", "processing", "completed"]
    assert history_rows(page)[0][3] == "received"
    assert history_rows(page)[2][1] == "1"  # the attempt that completed it
    assert re.search(r'field-attempts.*?<div class="readonly">1</div>', page, re.S)
    assert html.escape('"processor": {', quote=True) in page  # the result
    assert html.escape('"summary"', quote=True) in page
    assert "2026-03-10 12:00:00 UTC" in page  # the event's timestamp


def test_a_failed_event_shows_its_error_and_the_failure_in_its_history_escaped(
    staff: Client, api: ApiClient, signals, settings
) -> None:
    settings.BIGMIND_PROCESSOR = f"{__name__}.RefusingProcessor"
    [event] = processed(ingest(api, "visit", {"note": HOSTILE}))
    assert event.status == "failed"

    page = event_page(staff, event)

    assert HOSTILE not in page
    escaped_error = html.escape(f"endpoint said {HOSTILE} & gave up")
    assert escaped_error in page  # the last error
    statuses = [row[0] for row in history_rows(page)]
    assert statuses == ["pending", "processing", "failed"]
    assert history_rows(page)[-1][3] == escaped_error
    assert html.escape(HOSTILE).replace("&quot;", "\\&quot;") in page  # the payload, escaped


def test_the_payload_cannot_inject_markup_anywhere_on_the_event_page(
    staff: Client, tenant: Tenant
) -> None:
    signal = tenant.signal("visit")
    event = store_event(
        tenant,
        signal,
        received_at=timezone.now(),
        identity=("account", HOSTILE),
        data={HOSTILE: HOSTILE},
        reference=HOSTILE,
        result={"summary": HOSTILE},
        last_error=HOSTILE,
    )
    EventTransition.objects.create(
        event=event, status="failed", attempt=1, at=timezone.now(), note=HOSTILE
    )

    page = event_page(staff, event)

    assert HOSTILE not in page
    assert "<script>alert" not in page
    # identity, reference, payload key and value, result, last error, history note
    assert page.count("&lt;script&gt;alert") >= 7


def test_the_status_history_is_bounded(staff: Client, tenant: Tenant, monkeypatch) -> None:
    from events_app.admin import registrations

    monkeypatch.setattr(registrations, "STATUS_HISTORY_LIMIT", 3)
    event = store_event(tenant, tenant.signal("visit"), received_at=timezone.now())
    start = timezone.now()
    for n in range(5):
        EventTransition.objects.create(
            event=event,
            status="pending",
            attempt=n,
            at=start + timedelta(seconds=n),
            note=f"step {n}",
        )

    page = event_page(staff, event)

    assert [row[3] for row in history_rows(page)] == ["step 2", "step 3", "step 4"]
    assert "The latest 3 steps only." in page


def test_the_reprocess_action_requeues_a_failed_event(
    staff: Client, api: ApiClient, signals, settings
) -> None:
    settings.BIGMIND_PROCESSOR = f"{__name__}.RefusingProcessor"
    [event] = processed(ingest(api, "visit", {}))

    response = staff.post(
        EVENTS, {"action": "reprocess", "_selected_action": [str(event.pk)]}, follow=True
    )

    assert response.status_code == 200
    assert any("1 event queued" in str(m) for m in response.context["messages"])
    event.refresh_from_db()
    assert event.status == "pending"


# --- The record page --------------------------------------------------------------------------
def test_the_record_page_shows_states_aggregates_score_and_insights(
    staff: Client, api: ApiClient, signals
) -> None:
    # Recent: the engagement score decays (a 14-day half-life by default).
    at = timezone.now() - timedelta(hours=2)
    processed(
        ingest(api, "visit", {"page": "/pricing"}, at=at),
        ingest(api, "calls", {"value": 7}, at=at),
        ingest(api, "calls", {"value": 5}, at=at),
        ingest(api, "health", {"color": "green"}, at=at),
        ingest(api, "health", {"color": "<b>red</b>"}, at=at + timedelta(hours=1)),
    )
    record = CrmRecord.objects.get()

    response = staff.get(f"{RECORDS}{record.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    profile = response.context["bigmind_profile"]
    assert profile["event_count"] == 5
    assert profile["engagement_score"] > 0
    assert f'id="engagement-score">{profile["engagement_score"]}<' in page
    [state] = profile["states"]
    assert state["signal"] == "health"
    assert html.escape('"color": "<b>red</b>"') in page  # the newer state, escaped
    assert "<b>red</b>" not in page
    [series] = profile["aggregates"]
    assert (series["signal"], series["aggregation"], series["period"]) == ("calls", "sum", "day")
    assert [bucket["value"] for bucket in series["buckets"]] == [12.0]
    assert re.search(r'data-signal="calls".*?<td class="value">12\.0</td>', page, re.S)
    kinds = {insight["kind"] for insight in profile["insights"]}
    assert {"Event", "State change"} <= kinds
    latest = profile["insights"][0]["summary"]
    assert latest == "Health for account acc-1 changed from green to <b>red</b>"
    assert 'id="record-insights"' in page and html.escape(latest) in page
    assert f'href="/admin/events_app/event/?crm_record__id__exact={record.pk}"' in page


def test_the_records_events_link_lists_that_records_events_only(
    staff: Client, api: ApiClient, signals
) -> None:
    mine = ingest(api, "visit", {}, record="acc-1")
    ingest(api, "visit", {}, record="acc-2")
    record = CrmRecord.objects.get(external_id="acc-1")

    rows = listed(staff, f"{EVENTS}?crm_record__id__exact={record.pk}")

    assert [str(event.pk) for event in rows] == [mine]


def test_a_record_without_processing_shows_empty_sections(staff: Client, tenant: Tenant) -> None:
    event = store_event(tenant, tenant.signal("visit"), received_at=timezone.now())

    page = staff.get(f"{RECORDS}{event.crm_record_id}/change/").content.decode()

    assert "No state signal has reported on this record." in page
    assert "No metric signal has reported on this record." in page
    assert "No insights yet." in page
    assert 'id="engagement-score">0.0<' in page


# --- Filters ----------------------------------------------------------------------------------
def test_the_event_list_filters_by_signal_status_type_and_date(
    staff: Client, tenant: Tenant
) -> None:
    now = timezone.now()
    visit = tenant.signal("visit")
    calls = tenant.signal("calls", type="metric")
    recent_failed = store_event(tenant, visit, received_at=now, status=EventStatus.FAILED)
    recent_metric = store_event(tenant, calls, received_at=now - timedelta(minutes=1))
    old = store_event(tenant, visit, received_at=now - timedelta(days=40))

    def ids(query: str) -> set[Any]:
        return {event.pk for event in listed(staff, EVENTS + query)}

    assert ids("") == {recent_failed.pk, recent_metric.pk, old.pk}
    assert ids(f"?signal={visit.pk}") == {recent_failed.pk, old.pk}
    assert ids("?status__exact=failed") == {recent_failed.pk}
    assert ids("?signal__type__exact=metric") == {recent_metric.pk}
    since = urlencode({"received_at__gte": str(now - timedelta(days=7))})
    assert ids(f"?{since}") == {recent_failed.pk, recent_metric.pk}
    assert ids(
        f"?received_at__year={old.received_at.year}&received_at__month="
        f"{old.received_at.month}&received_at__day={old.received_at.day}"
    ) == {old.pk}

    page = staff.get(EVENTS).content.decode()
    assert f"?signal={visit.pk}" in page and "acme/visit" in page  # the signal filter's choices


def test_a_malformed_signal_filter_is_refused_not_a_crash(staff: Client, tenant: Tenant) -> None:
    tenant.signal("visit")
    response = staff.get(f"{EVENTS}?signal=not-a-number")
    assert response.status_code == 302
    assert "e=1" in response["Location"]


def test_the_signal_filter_offers_a_bounded_list(
    staff: Client, tenant: Tenant, monkeypatch
) -> None:
    from events_app.admin.selectors import SignalListFilter

    monkeypatch.setattr(SignalListFilter, "max_choices", 3)
    for n in range(5):
        tenant.signal(f"s-{n}")

    page = staff.get(EVENTS).content.decode()

    assert len(re.findall(r"\?signal=\d+", page)) == 3


def test_the_other_data_lists_render_with_their_filters(
    staff: Client, api: ApiClient, signals
) -> None:
    processed(
        ingest(api, "visit", {}), ingest(api, "calls", {"value": 1}), ingest(api, "health", {})
    )
    for url in (
        "/admin/events_app/insight/",
        f"/admin/events_app/insight/?signal={signals['visit'].pk}",
        "/admin/events_app/metricaggregate/",
        f"/admin/events_app/metricaggregate/?signal={signals['calls'].pk}",
        "/admin/events_app/recordstate/",
        "/admin/events_app/crmrecord/?type=account",
    ):
        assert listed(staff, url), url


# --- 100,000 events ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_event_and_record_pages_answer_within_a_second_with_100000_events(
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
    bulk_insert_events(
        record_id=record.pk,
        signals=signals,
        count=100_000,
        now=now,
        data='{"page": "/docs"}',
        status="CASE WHEN mod(i, 50) = 0 THEN 'failed' ELSE 'completed' END",
    )
    one = Event.objects.order_by("-received_at").first()
    assert one is not None
    scoped_user = get_user_model().objects.create_user("scoped", password="pw", is_staff=True)
    scoped_user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    OrganizationMembership.objects.create(user=scoped_user, organization=tenant.organization)
    scoped = Client()
    scoped.force_login(scoped_user)

    since = urlencode({"received_at__gte": str(now - timedelta(days=7))})
    urls = [
        EVENTS,
        f"{EVENTS}?signal={signals[3].pk}",
        f"{EVENTS}?status__exact=failed",
        f"{EVENTS}?signal__type__exact=event&{since}",
        f"{EVENTS}{one.pk}/change/",
        f"{RECORDS}{record.pk}/change/",
        f"{EVENTS}?crm_record__id__exact={record.pk}",
    ]
    timings = {}
    for client, who in ((staff, "superuser"), (scoped, "scoped")):
        for url in urls:
            assert client.get(url).status_code == 200, url  # warm-up
            # The best of up to three: the other tests' load on the shared cores only adds time
            # (one page took over 1 s so in CI); a plan that scans the table is slow every time.
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                response = client.get(url)
                best = min(best, time.perf_counter() - started)
                assert response.status_code == 200, url
                if best < 1.0:
                    break
            timings[f"{who} {url}"] = best
    print({k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    assert all(seconds < 1.0 for seconds in timings.values()), timings
