"""Every date-time the API answers is in the `Z` form, also inside stored JSON (issue #12):
an event's `result` (a metric rollup's `bucket_start`), the record profile, the lists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from bigmind.api_time import iso_utc, iso_utc_text
from events_app.models import Event
from events_app.pipeline.processing import events_process
from tests.conftest import ApiClient, Tenant

# A string the API writes as a date-time: anything starting like ISO 8601 date and time.
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
Z_FORM = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")


pytestmark = pytest.mark.usefixtures("pipeline_in_process")


def strings(value: Any, where: str = "$") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, keys included, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key} (key)", key
            yield from strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def assert_z_only(body: Any) -> list[str]:
    """No `+00:00` anywhere, and every date-time in the `Z` form; returns the date-times' paths."""
    seen = []
    for where, text in strings(body):
        assert "+00:00" not in text, f"{where}: {text}"
        if DATETIME.match(text):
            assert Z_FORM.match(text), f"{where}: {text}"
            seen.append(where)
    return seen


def get(api: ApiClient, path: str) -> Any:
    response = Client().get(path, headers={"Authorization": f"Bearer {api.raw_key}"})
    assert response.status_code == 200, response.content
    return response.json()


def test_iso_utc_writes_z_and_reads_old_offsets() -> None:
    assert iso_utc(datetime(2026, 3, 16, 12, tzinfo=UTC)) == "2026-03-16T12:00:00Z"
    assert iso_utc(datetime(2026, 3, 16, 12, 0, 0, 5)) == "2026-03-16T12:00:00.000005Z"
    assert iso_utc_text("2026-03-16T14:00:00+02:00") == "2026-03-16T12:00:00Z"
    assert iso_utc_text("not a time") == "not a time"


def test_a_processed_metric_event_and_its_record_answer_only_z_times(
    tenant: Tenant, api: ApiClient
) -> None:
    tenant.signal("calls", type="metric", aggregation="sum", period="day")
    for value in (5, 7):
        response = api.post(
            "/v1/events",
            {
                "signal": "calls",
                "identity": {"type": "account", "id": "acc-1"},
                "data": {"value": value},
                "timestamp": "2026-03-16T12:00:00+02:00",
            },
        )
        assert response.status_code == 202, response.content
        event_id = response.json()["data"]["id"]
    events_process(event_ids=list(Event.objects.values_list("id", flat=True)))

    event = get(api, f"/v1/events/{event_id}")
    assert event["data"]["status"] == "completed"
    assert event["data"]["result"]["rollup"]["metric"]["bucket_start"] == "2026-03-16T00:00:00Z"
    assert "$.data.result.rollup.metric.bucket_start" in assert_z_only(event)
    stored: Any = Event.objects.get(pk=event_id).result
    assert stored["rollup"]["metric"]["bucket_start"] == "2026-03-16T00:00:00Z"  # at the source

    assert assert_z_only(get(api, "/v1/events"))
    record = get(api, "/v1/records/account/acc-1")
    assert "$.data.aggregates[0].buckets[0].start" in assert_z_only(record)


def test_a_result_stored_before_the_fix_is_answered_in_z_form(
    tenant: Tenant, api: ApiClient
) -> None:
    tenant.signal("calls", type="metric", aggregation="sum", period="day")
    response = api.post(
        "/v1/events",
        {"signal": "calls", "identity": {"type": "account", "id": "acc-1"}, "data": {"value": 1}},
    )
    event_id = response.json()["data"]["id"]
    events_process(event_ids=[event_id])
    event = Event.objects.get(pk=event_id)
    result: Any = event.result
    result["rollup"]["metric"]["bucket_start"] = "2026-03-16T00:00:00+00:00"  # as stored before
    Event.objects.filter(pk=event_id).update(result=result)

    answer = get(api, f"/v1/events/{event_id}")
    assert answer["data"]["result"]["rollup"]["metric"]["bucket_start"] == "2026-03-16T00:00:00Z"
    assert_z_only(answer)
    listed = get(api, "/v1/events")["data"][0]
    assert listed["result"]["rollup"]["metric"]["bucket_start"] == "2026-03-16T00:00:00Z"
