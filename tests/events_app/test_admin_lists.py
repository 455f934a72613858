"""The data plane's admin lists and pages as issue #12 (items 8 and 10) left them: deliberate
columns (short ids, no column repeating another, an error column on rejected events), long
text cut with the whole value on hover, the event's rollups shown once, labels a staff member
understands, and the dashboard's latency note in plain words. Layout itself is measured in a
browser: tests/browser/test_admin_layout_browser.py."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib import admin
from django.db.models import Model
from django.test import Client
from django.utils import timezone

from bigmind.display import short_id_text
from events_app.admin.display import number_text
from events_app.admin.registrations import DataAdmin
from events_app.ids import uuid7
from events_app.models import (
    CrmRecord,
    Event,
    Insight,
    MetricAggregate,
    RecordState,
    RejectedEvent,
)
from tests.conftest import Tenant
from tests.events_app.test_read_api import store_event

T0 = datetime(2026, 12, 2, 20, 0, 36, tzinfo=UTC)
LONG_ID = "0015g00000" + "X" * 245
LONG_MESSAGE = "Signal 'visited-documentation-page' has no schema version 7; " * 10
ROLLUP = {"metric": {"bucket_start": "2026-12-02T00:00:00Z", "value": 120.5}}
# Column name prefixes whose cells are never cut (events_app/admin/display.py, "List columns").
WHOLE = ("ref_", "when_", "num_", "tag_")


def _data_admins() -> list[tuple[type[Model], DataAdmin]]:
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, DataAdmin)
    ]


@pytest.fixture
def rows(tenant: Tenant) -> dict[str, Any]:
    """One row of each data model, with long values."""
    visit = tenant.signal("visited-documentation-page")
    calls = tenant.signal("calls", type="metric", value_field="seconds")
    health = tenant.signal("health", type="state")
    event = store_event(
        tenant,
        visit,
        received_at=T0,
        identity=("account", LONG_ID),
        reference="order-" + "9" * 249,
        status="failed",
        attempts=3,
        last_error=LONG_MESSAGE,
        result={"processor": {"name": "rules", "version": "1"}, "rollup": ROLLUP},
        rollup=ROLLUP,
        due_at=T0,
    )
    record = CrmRecord.objects.get()
    Insight.objects.create(
        organization=tenant.organization,
        crm_record=record,
        signal=visit,
        event_id=event.pk,
        kind="event",
        summary="Account read the pricing page " * 15,
        score=80,
        next_action="Call them",
        processor="rules",
        processor_version="1",
        occurred_at=T0,
        created_at=T0,
    )
    MetricAggregate.objects.create(
        crm_record=record,
        signal=calls,
        period="day",
        bucket_start=T0.replace(hour=0, minute=0, second=0),
        count=12_345_678,
        sum=123_456_789.123456,
        min=0.5,
        max=98_765.25,
        updated_at=T0,
    )
    RecordState.objects.create(
        crm_record=record,
        signal=health,
        value={"color": "green", "owner": LONG_ID},
        timestamp=T0,
        event_id=event.pk,
        updated_at=T0,
    )
    rejection = RejectedEvent.objects.create(
        organization=tenant.organization,
        signal_slug="visited-documentation-page",
        reason="schema_validation_failed",
        message=LONG_MESSAGE,
        body="{}",
        body_truncated=True,
        body_bytes=70_000,
        identity_type="account",
        identity_id=LONG_ID,
        received_at=T0,
        replayed_event_id=event.pk,
        replayed_at=T0,
    )
    return {"event": event, "record": record, "rejection": rejection}


def _list_page(client: Client, model: type[Model]) -> tuple[Any, str]:
    response = client.get(f"/admin/events_app/{model._meta.model_name}/")
    assert response.status_code == 200
    return response, response.content.decode()


def _cells(page: str, column: str) -> list[str]:
    return re.findall(rf'<t[dh] class="field-{column}"[^>]*>(.*?)</t[dh]>', page, re.S)


def _headers(page: str) -> list[str]:
    heads = re.findall(r'<th scope="col" class="[^"]*column-[^"]*">(.*?)</th>', page, re.S)
    return [re.sub(r"<[^>]+>|\s+", " ", head).strip() for head in heads]


# --- Lists ------------------------------------------------------------------------------------
def test_every_data_list_cuts_long_text_only_with_the_whole_value_on_hover(
    staff: Client, rows: dict[str, Any]
) -> None:
    # The class, not the examples: a column added later without a prefix must render its text
    # through _cut (a span with the whole value in its title), or this fails.
    assert len(_data_admins()) >= 6
    for model, model_admin in _data_admins():
        _, page = _list_page(staff, model)
        for column in model_admin.list_display:
            assert isinstance(column, str), column  # named columns: CSS widths go by name
            cells = _cells(page, column)
            assert cells, f"{model.__name__}.{column}: no cell"
            if column.startswith(WHOLE):
                continue
            for cell in cells:
                assert re.search(r'class="bigmind-cut" title="[^"]+"', cell), (
                    f"{model.__name__}.{column}: {cell[:80]}"
                )


def test_the_event_list_shows_short_ids_one_identity_column_and_status_with_attempts(
    staff: Client, rows: dict[str, Any]
) -> None:
    event = rows["event"]
    _, page = _list_page(staff, Event)

    assert _headers(page) == [
        "ID",
        "Received",
        "Signal",
        "CRM record",
        "Status (attempts)",
        "Schema valid",
        "Reference",
    ]
    [id_cell] = _cells(page, "ref_id")
    assert f'title="{event.pk}"' in id_cell and f">{short_id_text(event.pk)}<" in id_cell
    [identity] = _cells(page, "identity_column")
    assert f'title="account:{LONG_ID}"' in identity  # type and id in one column, whole on hover
    assert "Failed (3)" in _cells(page, "tag_status")[0]
    assert "2026-12-02 20:00:36 UTC" in _cells(page, "when_received")[0]


def test_the_rejected_event_list_has_an_error_column_with_code_and_message(
    staff: Client, rows: dict[str, Any]
) -> None:
    rejection = rows["rejection"]
    _, page = _list_page(staff, RejectedEvent)

    assert _headers(page) == ["ID", "Received", "Signal (as sent)", "Error", "Replayed as"]
    assert "body truncated" not in page.lower()
    [error] = _cells(page, "wide_error")
    assert "<code>schema_validation_failed</code>" in error
    assert html.escape(LONG_MESSAGE.strip(), quote=True) in error  # whole, in the title too
    assert error.count(html.escape("has no schema version 7", quote=True)) >= 2
    [replayed] = _cells(page, "ref_replayed")
    assert f"/admin/events_app/event/{rejection.replayed_event_id}/change/" in replayed
    assert f">{short_id_text(rejection.replayed_event_id)}<" in replayed


def test_the_other_lists_have_their_chosen_columns(staff: Client, rows: dict[str, Any]) -> None:
    expected = {
        CrmRecord: ["Type", "External id", "Organization", "First seen", "Last seen"],
        Insight: ["Occurred", "CRM record", "Signal", "Score", "Summary"],
        MetricAggregate: ["CRM record", "Signal", "Period", "Period start", "Value", "Events"],
        RecordState: ["CRM record", "Signal", "Value", "As of (event timestamp)", "Updated"],
    }
    for model, headers in expected.items():
        _, page = _list_page(staff, model)
        assert _headers(page) == headers, model.__name__
    _, page = _list_page(staff, MetricAggregate)
    [value] = _cells(page, "num_value")
    # The signal's aggregation (sum), compact; every statistic exact on hover.
    assert ">123,456,789.12<" in value
    assert "sum: 123456789.123456" in value and "count 12,345,678" in value


def test_an_event_not_yet_tried_shows_its_status_alone(staff: Client, tenant: Tenant) -> None:
    store_event(tenant, tenant.signal("visit"), received_at=timezone.now())
    _, page = _list_page(staff, Event)
    [status] = _cells(page, "tag_status")
    assert ">Pending<" in status and 'title="Pending: 0 processing attempts"' in status


def test_numbers_are_compact_in_lists_and_exact_on_hover() -> None:
    assert number_text(12_345_678) == "12,345,678"
    assert number_text(120.0) == "120"
    assert number_text(0.000123456789) == "0.0001235"
    assert number_text(0.000123456789, exact=True) == "0.000123456789"
    assert number_text(1.5e13) == "1.5e+13"
    assert number_text(None) == "-"


# --- Pages ------------------------------------------------------------------------------------
def test_the_event_page_shows_the_rollups_once_and_says_when_it_is_tried_again(
    staff: Client, rows: dict[str, Any]
) -> None:
    event = rows["event"]
    page = staff.get(f"/admin/events_app/event/{event.pk}/change/").content.decode()

    assert page.count(html.escape('"bucket_start"', quote=True)) == 1
    assert "Rollups applied" in page and "Result (processor and insight)" in page
    assert html.escape('"processor": {', quote=True) in page  # the rest of the result stays
    assert "Next attempt, not before" in page
    assert "not queued again" not in page.lower()


def test_an_event_whose_rollups_are_only_in_its_result_still_shows_them_once(
    staff: Client, tenant: Tenant
) -> None:
    event = store_event(
        tenant,
        tenant.signal("visit"),
        received_at=timezone.now(),
        id=uuid7(),
        result={"rollup": ROLLUP},
        rollup=None,
    )
    page = staff.get(f"/admin/events_app/event/{event.pk}/change/").content.decode()
    assert page.count(html.escape('"bucket_start"', quote=True)) == 1


def test_the_dashboard_explains_latency_for_sales_ops(staff: Client, tenant: Tenant) -> None:
    page = staff.get(f"/admin/dashboard/{tenant.organization.slug}/").content.decode()

    note = re.search(r'<p class="help" id="latency-note">(.*?)</p>', page, re.S)
    assert note is not None
    text = " ".join(note.group(1).split())
    assert "p50: half of the events were ready within this time" in text
    assert "p95: 95 in 100 were" in text
    assert "percentile_cont" not in page and "interpolation" not in page
    assert "received_at" not in text and "processed_at" not in text


def test_short_ids_of_ids_made_in_the_same_minute_differ() -> None:
    # UUIDv7: the first 8 characters are the same for ids made within about 65 seconds.
    from events_app.ids import uuid7

    ids = [uuid7() for _ in range(50)]
    assert len({str(value)[:8] for value in ids}) < 5
    assert len({short_id_text(value) for value in ids}) == 50
    assert short_id_text(ids[0]) == "\u2026" + str(ids[0])[-8:]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([1], "1 more rejection within retention was over the per-minute cap"),
        ([2, 3], "5 more rejections within retention were over the per-minute cap"),
    ],
)
def test_the_rejected_events_list_counts_what_was_over_the_cap_in_words(
    staff: Client, tenant: Tenant, counts: list[int], message: str
) -> None:
    from events_app.models import RejectionOverflow

    for minute, count in enumerate(counts):
        RejectionOverflow.objects.create(
            organization=tenant.organization, minute=T0.replace(minute=minute), count=count
        )
    page = staff.get("/admin/events_app/rejectedevent/").content.decode()
    assert message in page and "(s)" not in page
