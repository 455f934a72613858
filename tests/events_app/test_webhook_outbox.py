"""The webhook outbox (events_app/webhooks/outbox.py): the pipeline writes each delivery an
endpoint is owed in the transaction that completes or fails the event, with the exact body every
attempt will send (built at the first attempt, then kept)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from events_app.models import Event, WebhookDelivery, WebhookEndpoint
from events_app.pipeline.claims import events_claim
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import PermanentProcessingError
from events_app.pipeline.reprocess import events_reprocess
from events_app.pipeline.sweep import events_sweep
from events_app.webhooks import outbox
from events_app.webhooks.endpoints import endpoint_create
from events_app.webhooks.sending import bodies_build
from events_app.webhooks.signing import header_value, verify
from tests.conftest import ApiClient, Tenant
from tests.events_app.test_pipeline import FakeProcessor, fake  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("pipeline_in_process")
PUBLIC = "https://93.184.215.14/hooks"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def signals(tenant: Tenant) -> None:
    tenant.signal("visit", rate_limit_per_minute=10000)
    tenant.signal("health", type="state", rate_limit_per_minute=10000)


def ingest(api: ApiClient, signal: str, data: dict, at: datetime = T0) -> str:
    response = api.post(
        "/v1/events",
        {
            "signal": signal,
            "identity": {"type": "account", "id": "acc-1"},
            "data": data,
            "timestamp": at.isoformat().replace("+00:00", "Z"),
        },
    )
    assert response.status_code == 202, response.content
    return response.json()["data"]["id"]


def built(endpoint_id: int | None = None) -> list[WebhookDelivery]:
    """The deliveries, oldest first, with the bodies their first attempt builds (and keeps)."""
    rows = WebhookDelivery.objects.order_by("id").select_related("organization")
    if endpoint_id is not None:
        rows = rows.filter(endpoint_id=endpoint_id)
    found = list(rows)
    for row in found:
        bodies_build([row], organization=row.organization.slug, now=timezone.now())
    return found


def bodies(endpoint_id: int | None = None) -> list[dict[str, Any]]:
    return [json.loads(row.body) for row in built(endpoint_id)]


def test_no_endpoint_no_delivery(api: ApiClient, signals: None) -> None:
    events_process(event_ids=[ingest(api, "visit", {"page": "/pricing"})])
    assert Event.objects.get().status == "completed"
    assert not WebhookDelivery.objects.exists()


def test_a_completion_and_its_insight_are_owed_with_the_event_as_the_api_shows_it(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    event_id = ingest(api, "visit", {"page": "/pricing"})
    events_process(event_ids=[event_id])

    assert set(WebhookDelivery.objects.values_list("body", flat=True)) == {""}  # not built yet
    completed, insight = bodies()
    shown = (
        Client()
        .get(f"/v1/events/{event_id}", headers={"Authorization": f"Bearer {tenant.raw_key}"})
        .json()["data"]
    )
    assert completed["type"] == "event.completed" and insight["type"] == "insight.created"
    for body in (completed, insight):
        assert body["id"].startswith("whevt_") and body["organization"] == tenant.organization.slug
        assert body["created"].endswith("Z")
        assert body["data"]["event"] == shown  # the API's own shape, byte for byte as JSON
    assert insight["data"]["insight"] == {
        key: shown["result"]["insight"][key]
        for key in ("kind", "summary", "score", "next_action", "reasons")
    }
    delivery = WebhookDelivery.objects.filter(endpoint=endpoint).first()
    assert delivery is not None and delivery.status == "pending" and delivery.attempts == 0
    assert json.loads(delivery.body)["id"] == delivery.webhook_event_id
    assert WebhookDelivery.objects.filter(body="").count() == 0  # kept once built


def test_a_flagged_event_is_announced_with_its_schema_flag_and_violations(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal(
        "signup",
        schema={"type": "object", "required": ["plan"]},
        enforcement="flag",
        rate_limit_per_minute=10000,
    )
    endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    event_id = ingest(api, "signup", {"seats": 2})
    events_process(event_ids=[event_id])

    completed, insight = bodies()
    violations = [{"path": "$", "message": "'plan' is a required property", "keyword": "required"}]
    for body in (completed, insight):
        event = body["data"]["event"]
        assert (event["schema_valid"], event["violations"]) == (False, violations)
    assert insight["data"]["insight"]["summary"].endswith("[data failed schema version 1]")


def test_the_signature_covers_the_exact_stored_bytes(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    created = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    events_process(event_ids=[ingest(api, "visit", {"page": "/é"})])
    raw = built()[0].body.encode()
    assert verify(
        header_value([created.secret], 1_800_000_000, raw), raw, created.secret, now=1_800_000_000
    )


def test_a_state_change_carries_the_previous_and_the_new_state(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    endpoint_create(organization=tenant.organization, url=PUBLIC, events=["state.changed"])
    first = ingest(api, "health", {"color": "green"}, at=T0)
    events_process(event_ids=[first])
    same = ingest(api, "health", {"color": "green"}, at=T0.replace(hour=13))
    events_process(event_ids=[same])  # no change: nothing owed
    red = ingest(api, "health", {"color": "red"}, at=T0.replace(hour=14))
    events_process(event_ids=[red])

    changes = bodies()
    assert [(b["data"]["previous"], b["data"]["state"]) for b in changes] == [
        (None, {"color": "green"}),
        ({"color": "green"}, {"color": "red"}),
    ]
    assert [b["data"]["event"]["id"] for b in changes] == [first, red]


def test_filters_by_type_and_signal_are_honoured(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    only_health = endpoint_create(
        organization=tenant.organization, url=PUBLIC, events=["*"], signals=["health"]
    ).endpoint
    only_completed = endpoint_create(
        organization=tenant.organization, url=PUBLIC, events=["event.completed"]
    ).endpoint
    events_process(event_ids=[ingest(api, "visit", {"page": "/"}), ingest(api, "health", {"c": 1})])

    assert {(b["type"], b["data"]["event"]["signal"]) for b in bodies(only_health.pk)} == {
        ("event.completed", "health"),
        ("insight.created", "health"),
        ("state.changed", "health"),
    }
    assert {(b["type"], b["data"]["event"]["signal"]) for b in bodies(only_completed.pk)} == {
        ("event.completed", "visit"),
        ("event.completed", "health"),
    }


def test_a_failed_event_is_owed_event_failed(
    api: ApiClient,
    tenant: Tenant,
    signals: None,
    fake: type[FakeProcessor],  # noqa: F811
) -> None:
    endpoint_create(organization=tenant.organization, url=PUBLIC, events=["event.failed"])
    fake.outcome = PermanentProcessingError("the model refused")
    events_process(event_ids=[ingest(api, "visit", {"page": "/"})])
    [failed] = bodies()
    assert failed["type"] == "event.failed"
    assert failed["data"]["event"]["status"] == "failed"
    assert "the model refused" in failed["data"]["event"]["last_error"]


def test_a_completion_that_rolls_back_leaves_no_delivery(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    event_id = ingest(api, "visit", {"page": "/"})
    with mock.patch(
        "events_app.pipeline.rollups.engagement_masses_add",
        side_effect=OperationalError("connection lost"),
    ):
        events_process(event_ids=[event_id])
    assert Event.objects.get().status == "pending"  # to be retried
    assert not WebhookDelivery.objects.exists()
    Event.objects.filter(pk=event_id).update(due_at=None)
    events_process(event_ids=[event_id])  # the retry completes it, and it is owed once
    assert Event.objects.get().status == "completed"
    assert WebhookDelivery.objects.filter(type="event.completed").count() == 1


def test_an_event_the_sweep_fails_after_its_last_try_is_owed_event_failed(
    api: ApiClient, tenant: Tenant, signals: None, settings
) -> None:
    settings.CELERY_TASK_TIME_LIMIT = 90
    settings.BIGMIND_SWEEP_STUCK_MARGIN_SECONDS = 30
    settings.BIGMIND_PROCESSING_MAX_ATTEMPTS = 1
    endpoint_create(organization=tenant.organization, url=PUBLIC, events=["event.failed"])
    event_id = ingest(api, "visit", {"page": "/"})
    [claim] = events_claim(event_ids=[event_id])  # the worker then dies, on its last try
    assert events_sweep(now=claim.claimed_at + timedelta(seconds=121)).failed == 1
    [failed] = bodies()
    assert failed["type"] == "event.failed" and failed["data"]["event"]["id"] == event_id
    assert "stopped before finishing" in failed["data"]["event"]["last_error"]


def test_a_reprocessed_event_is_owed_its_completion_but_not_its_insight_again(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    event_id = ingest(api, "visit", {"page": "/pricing"})
    events_process(event_ids=[event_id])
    events_reprocess(events=Event.objects.filter(pk=event_id))
    events_process(event_ids=[event_id])
    assert sorted(b["type"] for b in bodies()) == [
        "event.completed",
        "event.completed",
        "insight.created",
    ]


def test_an_endpoint_deleted_meanwhile_does_not_fail_the_completion(
    api: ApiClient, tenant: Tenant, signals: None
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    event_id = ingest(api, "visit", {"page": "/"})
    real_write = outbox.deliveries_write

    def write_then_lose_the_endpoint(*args: Any, **kwargs: Any) -> Any:
        written = real_write(*args, **kwargs)
        WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()  # raw: as another session would
        return written

    with mock.patch.object(outbox, "deliveries_write", write_then_lose_the_endpoint):
        events_process(event_ids=[event_id])
    assert Event.objects.get().status == "completed"
