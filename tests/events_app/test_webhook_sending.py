"""Sending webhooks (events_app/webhooks/sending.py and http.py) to a real local HTTP receiver.

The drain runs here, in the test's process (the `webhooks` worker runs the same function:
tests/events_app/test_webhook_worker.py); the receiver is a real threaded HTTP server, so every
request is bytes on a socket, and each signature is checked against the exact bytes received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from events_app.models import Event, WebhookDelivery, WebhookEndpoint
from events_app.pipeline.processing import events_process
from events_app.webhooks import sending
from events_app.webhooks.endpoints import (
    InvalidEndpoint,
    endpoint_create,
    endpoint_rotate_secret,
    endpoint_update,
)
from events_app.webhooks.signing import parse, verify
from tests.conftest import ApiClient, Tenant
from tests.events_app.test_webhook_outbox import ingest
from tests.webhook_receiver import Receiver, receiver_running

pytestmark = pytest.mark.usefixtures("pipeline_in_process")


@pytest.fixture
def signals(tenant: Tenant) -> None:
    tenant.signal("visit", rate_limit_per_minute=10000)
    tenant.signal("health", type="state", rate_limit_per_minute=10000)


@pytest.fixture
def local(settings: Any) -> Any:
    """Loopback receivers allowed (the development setting), retries quick."""
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS = 0.01
    settings.BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 0.02
    return settings


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiver_running() as running:
        yield running


def drain(endpoint: WebhookEndpoint) -> int:
    return sending.endpoint_drain(endpoint_id=endpoint.pk, time_budget=30)


def drain_until_settled(endpoint: WebhookEndpoint, timeout: float = 10.0) -> None:
    """Drain, waiting out the (tiny) retry backoffs, until nothing is pending."""
    deadline = time.monotonic() + timeout
    while WebhookDelivery.objects.filter(endpoint=endpoint, status="pending").exists():
        assert time.monotonic() < deadline, "deliveries still pending"
        drain(endpoint)
        time.sleep(0.03)


def assert_signed(received: Any, secrets: list[str]) -> None:
    """Every live secret verifies the exact bytes, and the headers are the contract's."""
    header = received.headers["Bigmind-Signature"]
    for secret in secrets:
        assert verify(header, received.body, secret), secret
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["User-Agent"] == "Bigmind-Webhooks/1"
    assert received.headers["Bigmind-Webhook-Id"] == received.id


def test_a_completion_an_insight_and_a_state_change_arrive_signed_and_verifiable(
    api: ApiClient, tenant: Tenant, signals: None, local: Any, receiver: Receiver
) -> None:
    created = endpoint_create(organization=tenant.organization, url=receiver.url, events=["*"])
    visit = ingest(api, "visit", {"page": "/pricing"})
    health = ingest(api, "health", {"color": "red"})
    events_process(event_ids=[visit, health])

    assert drain(created.endpoint) == 5
    got = receiver.wait_for(5)
    assert sorted((r.json["type"], r.json["data"]["event"]["id"]) for r in got) == sorted(
        [
            ("event.completed", visit),
            ("insight.created", visit),
            ("event.completed", health),
            ("insight.created", health),
            ("state.changed", health),
        ]
    )
    stored = {d.webhook_event_id: d for d in WebhookDelivery.objects.all()}
    for received in got:
        assert_signed(received, [created.secret])
        assert received.path == "/hooks"
        assert received.body == stored[received.id].body.encode()  # the stored bytes, exactly
    # One claim, one connection (kept alive between the five).
    assert len({r.peer for r in got}) == 1
    assert {d.status for d in stored.values()} == {"succeeded"}
    assert all(d.attempts == 1 and d.last_status_code == 200 for d in stored.values())
    assert all(d.completed_at is not None and d.claimed_at is None for d in stored.values())


def test_a_receiver_answering_500_then_200_gets_the_same_id_twice_and_ends_succeeded(
    api: ApiClient,
    tenant: Tenant,
    signals: None,
    local: Any,
    receiver: Receiver,
    pipeline_in_process: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["event.completed"]
    ).endpoint
    events_process(event_ids=[ingest(api, "visit", {"page": "/"})])
    receiver.script = [500]
    # A backoff long enough that the drain ends before the retry is due, even on a slow machine.
    local.BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS = 2
    local.BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 2

    with django_capture_on_commit_callbacks(execute=True):
        drain(endpoint)  # the 500; its retry is not due yet
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.last_status_code == 500 and delivery.last_error == "HTTP 500"
    assert delivery.next_attempt_at is not None
    # The short backoff is a delayed message for this endpoint (a long one is the sweep's).
    [call] = pipeline_in_process.webhooks_later.call_args_list
    assert call.args == ((endpoint.pk,),) and 1 <= call.kwargs["countdown"] <= 2
    assert WebhookEndpoint.objects.get().failing_since is not None

    WebhookDelivery.objects.update(next_attempt_at=timezone.now())  # the delayed message is due
    drain_until_settled(endpoint)
    first, second = receiver.wait_for(2)
    assert first.id == second.id == delivery.webhook_event_id
    assert first.body == second.body
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 2, 200)
    assert WebhookEndpoint.objects.get().failing_since is None  # a success ends the run


@pytest.mark.parametrize("behaviour", ["hang", "trickle"])
def test_a_hanging_or_trickling_receiver_costs_one_time_out(
    api: ApiClient,
    tenant: Tenant,
    signals: None,
    local: Any,
    receiver: Receiver,
    behaviour: str,
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["event.completed"]
    ).endpoint
    events_process(event_ids=[ingest(api, "visit", {"page": "/"})])
    receiver.script = [behaviour]
    with mock.patch.object(sending, "TIMEOUT_SECONDS", 1.0):
        started = time.monotonic()
        claim = sending.deliveries_claim(endpoint_id=endpoint.pk)
        assert claim is not None
        [outcome] = sending.claim_send(claim)
        took = time.monotonic() - started
    # A trickle sends a byte a second: without a total deadline each read would wait again.
    assert 0.9 < took < 1.8, took
    assert outcome.error == "Timed out after 1 s" and not outcome.succeeded
    sending.claim_record(claim, [outcome])
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.last_error == "Timed out after 1 s"
    assert len(receiver.received) == 1


def test_a_redirect_is_a_failure_and_is_not_followed(
    api: ApiClient, tenant: Tenant, signals: None, local: Any, receiver: Receiver
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["event.completed"]
    ).endpoint
    events_process(event_ids=[ingest(api, "visit", {"page": "/"})])
    receiver.script = ["redirect"]
    claim = sending.deliveries_claim(endpoint_id=endpoint.pk)
    assert claim is not None
    [outcome] = sending.claim_send(claim)
    assert outcome.status_code == 302 and "redirects are not followed" in outcome.error
    assert len(receiver.received) == 1


def test_the_response_is_read_up_to_a_bound(
    api: ApiClient, tenant: Tenant, signals: None, local: Any, receiver: Receiver
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["event.completed"]
    ).endpoint
    events_process(event_ids=[ingest(api, "visit", {"page": "/"})])
    receiver.script = ["huge"]
    drain(endpoint)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "succeeded"
    assert delivery.response_excerpt == "y" * 2048


def test_filters_by_type_and_by_signal_are_honoured_on_the_wire(
    api: ApiClient, tenant: Tenant, signals: None, local: Any
) -> None:
    with receiver_running() as insights, receiver_running() as health:
        by_type = endpoint_create(
            organization=tenant.organization, url=insights.url, events=["insight.created"]
        ).endpoint
        by_signal = endpoint_create(
            organization=tenant.organization, url=health.url, events=["*"], signals=["health"]
        ).endpoint
        events_process(
            event_ids=[ingest(api, "visit", {"page": "/"}), ingest(api, "health", {"c": 1})]
        )
        drain(by_type)
        drain(by_signal)
        assert sorted(
            (r.json["type"], r.json["data"]["event"]["signal"]) for r in insights.received
        ) == [("insight.created", "health"), ("insight.created", "visit")]
        assert sorted(
            (r.json["type"], r.json["data"]["event"]["signal"]) for r in health.received
        ) == [
            ("event.completed", "health"),
            ("insight.created", "health"),
            ("state.changed", "health"),
        ]


def test_ping_is_sent_signed(tenant: Tenant, local: Any, receiver: Receiver) -> None:
    created = endpoint_create(organization=tenant.organization, url=receiver.url, events=["*"])
    delivery = sending.ping_create(endpoint=created.endpoint)
    drain(created.endpoint)
    [ping] = receiver.wait_for(1)
    assert_signed(ping, [created.secret])
    assert ping.json["type"] == "ping" and ping.id == delivery.webhook_event_id
    assert ping.json["data"] == {
        "webhook_endpoint": {"id": created.endpoint.public_id, "url": receiver.url}
    }
    endpoint_update(created.endpoint, enabled=False)
    with pytest.raises(sending.EndpointDisabled):
        sending.ping_create(endpoint=created.endpoint)


def test_after_a_rotation_both_secrets_sign_until_the_old_one_expires(
    tenant: Tenant, local: Any, receiver: Receiver
) -> None:
    created = endpoint_create(organization=tenant.organization, url=receiver.url, events=["*"])
    rotated = endpoint_rotate_secret(created.endpoint)
    sending.ping_create(endpoint=rotated.endpoint)
    drain(rotated.endpoint)
    [ping] = receiver.wait_for(1)
    _, signatures = parse(ping.headers["Bigmind-Signature"])
    assert len(signatures) == 2
    assert_signed(ping, [rotated.secret, created.secret])

    later = timezone.now() + timedelta(hours=24, seconds=1)
    sending.ping_create(endpoint=rotated.endpoint)
    with mock.patch("events_app.webhooks.sending.timezone.now", return_value=later):
        claim = sending.deliveries_claim(endpoint_id=rotated.endpoint.pk, now=later)
        assert claim is not None
        sending.claim_record(claim, sending.claim_send(claim, now=later), now=later)
    _, ping2 = receiver.wait_for(2)
    header = ping2.headers["Bigmind-Signature"]
    assert len(parse(header)[1]) == 1
    assert verify(header, ping2.body, rotated.secret)
    assert not verify(header, ping2.body, created.secret)


def test_private_addresses_are_refused_unless_the_setting_allows_them(
    tenant: Tenant, settings: Any, receiver: Receiver
) -> None:
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(InvalidEndpoint):
        endpoint_create(organization=tenant.organization, url=receiver.url, events=["*"])
    # Saved while allowed (or a name that later resolves to a private address): refused at
    # connect time, and nothing reaches the receiver.
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["*"]
    ).endpoint
    sending.ping_create(endpoint=endpoint)
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    drain(endpoint)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.last_status_code is None
    assert delivery.last_error.startswith("Refused: The URL must start with https://")
    assert receiver.received == []


def test_the_in_flight_cap_and_a_claim_lost_with_its_worker(
    tenant: Tenant, local: Any, receiver: Receiver
) -> None:
    local.BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT = 1
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["*"]
    ).endpoint
    first, second = (sending.ping_create(endpoint=endpoint) for _ in range(2))
    now = timezone.now()
    held = sending.deliveries_claim(endpoint_id=endpoint.pk, now=now, limit=1)
    assert held is not None and [d.pk for d in held.deliveries] == [first.pk]
    # One sender in flight: the cap is reached, the second delivery waits.
    assert sending.deliveries_claim(endpoint_id=endpoint.pk, now=now) is None
    # The holder was killed mid-send: after the lease its delivery is claimable again, first.
    later = now + timedelta(seconds=local.BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS + 1)
    again = sending.deliveries_claim(endpoint_id=endpoint.pk, now=later, limit=1)
    assert again is not None and [d.pk for d in again.deliveries] == [first.pk]
    assert again.deliveries[0].attempts == 2
    # The dead holder's result, were it to come back, is fenced off.
    assert sending.claim_record(held, sending.claim_send(held), now=later) == [""]
    assert sending.claim_record(again, sending.claim_send(again), now=later) == ["succeeded"]
    assert WebhookDelivery.objects.get(pk=second.pk).status == "pending"


def test_a_claim_takes_several_deliveries_and_releases_what_it_did_not_send(
    tenant: Tenant, local: Any, receiver: Receiver
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["*"]
    ).endpoint
    pings = [sending.ping_create(endpoint=endpoint) for _ in range(3)]
    receiver.script = ["hang"]
    with mock.patch.object(sending, "TIMEOUT_SECONDS", 0.5):
        claim = sending.deliveries_claim(endpoint_id=endpoint.pk)
        assert claim is not None and len(claim.deliveries) == 3
        outcomes = sending.claim_send(claim)
    # No answer at all from the first: the others are not tried against a hanging receiver.
    assert len(outcomes) == 1 and outcomes[0].error == "Timed out after 0.5 s"
    assert sending.claim_record(claim, outcomes) == ["pending"]
    rows = {d.pk: d for d in WebhookDelivery.objects.all()}
    assert rows[pings[0].pk].attempts == 1 and rows[pings[0].pk].claimed_at is None
    # Released untried: claimable at once, and no attempt counted.
    for ping in pings[1:]:
        assert rows[ping.pk].attempts == 0 and rows[ping.pk].claimed_at is None
    assert len(receiver.received) == 1


def test_retries_stop_after_the_retry_window_and_a_failing_endpoint_is_disabled(
    tenant: Tenant, local: Any, receiver: Receiver
) -> None:
    local.BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS = 3600
    local.BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 6 * 3600
    receiver.default = 503
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["*"]
    ).endpoint
    delivery = sending.ping_create(endpoint=endpoint)
    now = timezone.now()
    attempts = 0
    while True:
        claim = sending.deliveries_claim(endpoint_id=endpoint.pk, now=now)
        if claim is None:
            break
        [status] = sending.claim_record(claim, sending.claim_send(claim, now=now), now=now)
        attempts += 1
        delivery.refresh_from_db()
        if status != "pending":
            break
        now = delivery.next_attempt_at  # type: ignore[assignment]
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.completed_at is not None
    # Exponential backoff from an hour, capped at 6 h (each wait 3 to 6 h), within 3 days: about 20 attempts.
    assert 10 <= attempts <= 24, attempts
    assert now - delivery.created_at <= timedelta(days=3)
    endpoint.refresh_from_db()
    # Failing since the first attempt, not yet for 3 days: still enabled.
    assert endpoint.enabled and endpoint.failing_since is not None

    sending.delivery_retry(delivery=delivery)  # staff: one more try, 3 days after the first
    three_days = endpoint.failing_since + timedelta(days=3, seconds=1)
    claim = sending.deliveries_claim(endpoint_id=endpoint.pk, now=three_days)
    assert claim is not None
    sending.claim_record(claim, sending.claim_send(claim), now=three_days)
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "every delivery failed since" in endpoint.disabled_reason
    assert "HTTP 503" in endpoint.disabled_reason
    # A disabled endpoint is sent nothing, however much is due.
    WebhookDelivery.objects.update(status="pending", next_attempt_at=three_days)
    assert sending.deliveries_claim(endpoint_id=endpoint.pk, now=three_days) is None
    # Enabled again by staff: the run of failures starts over.
    endpoint_update(endpoint, enabled=True)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is None and endpoint.disabled_reason == ""


def test_the_sweep_wakes_endpoints_with_due_deliveries_and_drops_orphans(
    tenant: Tenant, local: Any, pipeline_in_process: mock.MagicMock
) -> None:
    due = endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/a", events=["*"]
    ).endpoint
    later = endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/b", events=["*"]
    ).endpoint
    off = endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/c", events=["*"]
    ).endpoint
    for endpoint in (due, later, off):
        sending.ping_create(endpoint=endpoint)
    WebhookDelivery.objects.filter(endpoint=later).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    endpoint_update(off, enabled=False)
    gone = endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/d", events=["*"]
    ).endpoint
    sending.ping_create(endpoint=gone)
    WebhookEndpoint.objects.filter(pk=gone.pk)._raw_delete(using="default")  # deleted mid-write
    pipeline_in_process.webhooks.reset_mock()

    result = sending.deliveries_sweep()
    assert result.woken == 1 and result.orphans_dropped == 1
    assert [c.args for c in pipeline_in_process.webhooks.call_args_list] == [(due.pk,)]
    assert not WebhookDelivery.objects.filter(endpoint_id=gone.pk).exists()


def test_a_manual_retry_sends_a_succeeded_delivery_again_with_the_same_id(
    tenant: Tenant, local: Any, receiver: Receiver
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["*"]
    ).endpoint
    delivery = sending.ping_create(endpoint=endpoint)
    drain(endpoint)
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    retried = sending.delivery_retry(delivery=delivery)
    assert retried.status == "pending" and retried.completed_at is None
    drain(endpoint)
    first, second = receiver.wait_for(2)
    assert first.id == second.id and first.body == second.body
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 2


def test_deliveries_are_published_after_the_commit_that_wrote_them(
    api: ApiClient,
    tenant: Tenant,
    signals: None,
    local: Any,
    pipeline_in_process: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/a", events=["*"]
    ).endpoint
    event_id = ingest(api, "visit", {"page": "/"})
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        events_process(event_ids=[event_id])
        assert pipeline_in_process.webhooks.call_count == 0  # not before the commit
    assert callbacks
    assert [c.args for c in pipeline_in_process.webhooks.call_args_list] == [(endpoint.pk,)]
    assert Event.objects.get().status == "completed"
    assert WebhookDelivery.objects.get(type="event.completed").event_id == Event.objects.get().pk


def test_attempts_are_counted_by_outcome_and_timed(
    tenant: Tenant, local: Any, receiver: Receiver
) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "retrying": sample("bigmind_webhook_deliveries_total", type="ping", outcome="retrying"),
        "succeeded": sample("bigmind_webhook_deliveries_total", type="ping", outcome="succeeded"),
        "latency": sample("bigmind_webhook_delivery_latency_seconds_count", type="ping"),
        "duration": sample("bigmind_webhook_delivery_duration_seconds_count"),
    }
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["*"]
    ).endpoint
    receiver.script = [500]
    sending.ping_create(endpoint=endpoint)
    drain_until_settled(endpoint)
    after = {
        "retrying": sample("bigmind_webhook_deliveries_total", type="ping", outcome="retrying"),
        "succeeded": sample("bigmind_webhook_deliveries_total", type="ping", outcome="succeeded"),
        "latency": sample("bigmind_webhook_delivery_latency_seconds_count", type="ping"),
        "duration": sample("bigmind_webhook_delivery_duration_seconds_count"),
    }
    assert {k: after[k] - before[k] for k in before} == {
        "retrying": 1,
        "succeeded": 1,
        "latency": 1,
        "duration": 2,
    }


def test_the_body_is_built_at_the_first_attempt_and_an_event_deleted_before_it_fails_it(
    api: ApiClient, tenant: Tenant, signals: None, local: Any, receiver: Receiver
) -> None:
    endpoint = endpoint_create(
        organization=tenant.organization, url=receiver.url, events=["event.completed"]
    ).endpoint
    kept, purged = ingest(api, "visit", {"page": "/a"}), ingest(api, "visit", {"page": "/b"})
    events_process(event_ids=[kept, purged])
    assert set(WebhookDelivery.objects.values_list("body", flat=True)) == {""}
    Event.objects.filter(pk=purged).delete()  # retention, before the first attempt

    drain(endpoint)
    [request] = receiver.wait_for(1)
    assert request.json["data"]["event"]["id"] == kept
    sent = WebhookDelivery.objects.get(event_id=kept)
    assert sent.status == "succeeded" and sent.body.encode() == request.body
    lost = WebhookDelivery.objects.get(event_id=purged)
    assert lost.status == "failed" and lost.last_error == sending.EVENT_GONE
    assert lost.body == "" and lost.completed_at is not None
