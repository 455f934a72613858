"""A key's signal allow-list and its expiry, on every kind of /v1 route.

The allow-list key here may use `shared-slug` only; `acme-only-docs` (which exists) and
`never-existed-docs` (which does not) are both outside it and must get the same answer."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from events_app.models import Event, RejectedEvent, WebhookDelivery, WebhookEndpoint
from signals_app.services import api_key_create
from tests.security.conftest import Org, ingest_payload, send

MISSING = "never-existed-docs"


def _restricted(org: Org, *slugs: str) -> str:
    _, raw = api_key_create(
        organization=org.tenant.organization,
        name="restricted",
        signals=list(slugs or [org.shared_signal.slug]),
    )
    return raw


def _not_allowed(response: Any, slug: str) -> None:
    assert response.status_code == 403, response.content
    body = response.json()
    assert body["success"] is False
    assert body["code"] == "signal_not_allowed"
    assert slug in body["error"]


def _masked(response: Any, slug: str) -> str:
    return response.content.decode().replace(slug, "<SLUG>")


# --- Writes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/validate"])
def test_a_signal_outside_the_allow_list_is_refused_whether_or_not_it_exists(
    path: str, acme: Org
) -> None:
    key = _restricted(acme)
    client = Client()
    events, rejections = Event.objects.count(), RejectedEvent.objects.count()
    outside = send(client, "POST", path, key=key, body=ingest_payload(acme.only_signal.slug))
    missing = send(client, "POST", path, key=key, body=ingest_payload(MISSING))
    _not_allowed(outside, acme.only_signal.slug)
    _not_allowed(missing, MISSING)
    # No existence oracle: same body, no rate-limit headers for either.
    assert _masked(outside, acme.only_signal.slug) == _masked(missing, MISSING)
    assert not [h for h in outside.headers if h.lower().startswith("x-ratelimit")]
    # A malformed request naming an outside signal does not reveal it through headers either.
    bad = send(
        client, "POST", path, key=key, body=ingest_payload(acme.only_signal.slug, identity=None)
    )
    assert bad.status_code == 400
    assert not [h for h in bad.headers if h.lower().startswith("x-ratelimit")]
    # Nothing stored, nothing recorded as a rejection.
    assert Event.objects.count() == events
    assert RejectedEvent.objects.count() == rejections
    allowed = send(client, "POST", path, key=key, body=ingest_payload(acme.shared_signal.slug))
    assert allowed.status_code == (202 if path == "/v1/events" else 200), allowed.content


def test_a_refused_signal_spends_no_rate_budget(acme: Org) -> None:
    from signals_app.services import signal_update

    signal_update(signal=acme.only_signal, rate_limit_per_minute=1)
    key = _restricted(acme)
    for _ in range(3):
        refused = send(
            Client(), "POST", "/v1/events", key=key, body=ingest_payload(acme.only_signal.slug)
        )
        _not_allowed(refused, acme.only_signal.slug)
    # acme's own full key still has the whole budget of the signal.
    sent = send(
        Client(),
        "POST",
        "/v1/events",
        key=acme.key,
        body=ingest_payload(acme.only_signal.slug, data={"page": "/p"}),
    )
    assert sent.status_code == 202, sent.content


def test_batch_items_outside_the_allow_list_are_refused_one_by_one(acme: Org) -> None:
    key = _restricted(acme)
    body = {
        "events": [
            ingest_payload(acme.shared_signal.slug, reference="a"),
            ingest_payload(acme.only_signal.slug, reference="b"),
            ingest_payload(MISSING, reference="c"),
            ingest_payload(acme.shared_signal.slug, reference="d"),
        ]
    }
    before = Event.objects.count()
    answer = send(Client(), "POST", "/v1/events/batch", key=key, body=body)
    assert answer.status_code == 207, answer.content
    items = answer.json()["data"]
    assert [item["status"] for item in items] == ["pending", "rejected", "rejected", "pending"]
    for item, slug in ((items[1], acme.only_signal.slug), (items[2], MISSING)):
        assert item["code"] == "signal_not_allowed"
        assert item["status_code"] == 403
        assert slug in item["error"]
        assert item["reference"] in ("b", "c")
    assert Event.objects.count() == before + 2
    assert set(
        Event.objects.filter(reference__in=["a", "b", "c", "d"]).values_list("reference", flat=True)
    ) == {"a", "d"}


# --- Reads --------------------------------------------------------------------------------------
def test_event_reads_hold_only_the_allowed_signals(acme: Org) -> None:
    key = _restricted(acme)
    client = Client()
    listed = send(client, "GET", "/v1/events", key=key, query={"limit": "100"}).json()["data"]
    assert listed and {event["signal"] for event in listed} == {acme.shared_signal.slug}
    assert {e["id"] for e in listed} == {
        str(pk)
        for pk in Event.objects.filter(signal=acme.shared_signal).values_list("pk", flat=True)
    }
    by_filter = send(client, "GET", "/v1/events", key=key, query={"signal": "shared-slug"})
    assert by_filter.status_code == 200 and by_filter.json()["data"]
    for slug in (acme.only_signal.slug, MISSING):
        _not_allowed(send(client, "GET", "/v1/events", key=key, query={"signal": slug}), slug)
    # Another signal's event is as unknown as one that never existed.
    other = send(client, "GET", f"/v1/events/{acme.ingested_event_id}", key=key)
    missing = send(client, "GET", "/v1/events/0190a0a0-0000-7000-8000-000000000000", key=key)
    assert other.status_code == missing.status_code == 404
    assert other.json()["code"] == "event_not_found"
    own = send(client, "GET", f"/v1/events/{acme.shared_record_event_id}", key=key)
    assert own.status_code == 200


def test_rejection_reads_hold_only_the_allowed_signals(acme: Org) -> None:
    # build_org recorded a schema refusal on acme-only-docs and an unknown-signal refusal.
    key = _restricted(acme, acme.only_signal.slug)
    client = Client()
    listed = send(client, "GET", "/v1/rejections", key=key).json()["data"]
    assert listed and {item["signal"] for item in listed} == {acme.only_signal.slug}
    everything = send(client, "GET", "/v1/rejections", key=acme.key).json()["data"]
    assert {item["signal"] for item in everything} > {acme.only_signal.slug}
    for slug in ("acme-no-such-signal", MISSING):
        refused = send(client, "GET", "/v1/rejections", key=key, query={"signal": slug})
        _not_allowed(refused, slug)


def test_signal_reads_hold_only_the_allowed_signals(acme: Org) -> None:
    key = _restricted(acme)
    client = Client()
    listed = send(client, "GET", "/v1/signals", key=key).json()["data"]
    assert [s["slug"] for s in listed] == [acme.shared_signal.slug]
    assert send(client, "GET", f"/v1/signals/{acme.shared_signal.slug}", key=key).status_code == 200
    for path in (
        f"/v1/signals/{acme.only_signal.slug}",
        f"/v1/signals/{acme.only_signal.slug}/schemas/1",
        f"/v1/signals/{acme.only_signal.slug}/schemas/latest",
    ):
        outside = send(client, "GET", path, key=key)
        missing = send(client, "GET", path.replace(acme.only_signal.slug, MISSING), key=key)
        assert outside.status_code == missing.status_code == 404, path
        assert _masked(outside, acme.only_signal.slug) == _masked(missing, MISSING)
        assert outside.json()["code"] == "signal_not_found"


def test_record_reads_hold_only_the_allowed_signals(acme: Org) -> None:
    client = Client()
    only_record = f"/v1/records/account/{acme.slug.upper()}-ONLY-1"
    assert send(client, "GET", only_record, key=acme.key).status_code == 200
    key = _restricted(acme)
    # A record with events of other signals only: not found, like one that never was.
    hidden = send(client, "GET", only_record, key=key)
    assert hidden.status_code == 404 and hidden.json()["code"] == "record_not_found"
    # build_world's record: events of page-viewed, a metric bucket of api-calls, an insight and
    # a state of page-viewed. Allowed page-viewed only: no api-calls series.
    world = acme.world.record
    path = f"/v1/records/{world.type}/{world.external_id}"
    full = send(client, "GET", path, key=acme.key).json()["data"]
    assert {s["signal"] for s in full["aggregates"]} == {"api-calls"}
    limited = send(client, "GET", path, key=_restricted(acme, "page-viewed")).json()["data"]
    assert {c["signal"] for c in limited["events_by_signal"]} == {"page-viewed"}
    assert limited["aggregates"] == []
    assert {s["signal"] for s in limited["states"]} <= {"page-viewed"}
    assert {i["signal"] for i in limited["insights"]} <= {"page-viewed"}
    metric_only = send(client, "GET", path, key=_restricted(acme, "api-calls"))
    assert metric_only.status_code == 404  # no event of api-calls on the record


# --- Webhook endpoints --------------------------------------------------------------------------
def test_a_restricted_key_subscribes_endpoints_to_allowed_signals_only(acme: Org) -> None:
    key = _restricted(acme)
    client = Client()
    url = "https://93.184.215.14/restricted"
    for signals in (None, [], [acme.only_signal.slug], [acme.shared_signal.slug, MISSING]):
        body: dict[str, Any] = {"url": url, "events": ["*"]}
        if signals is not None:
            body["signals"] = signals
        refused = send(client, "POST", "/v1/webhook-endpoints", key=key, body=body)
        assert refused.status_code == 403, (signals, refused.content)
        assert refused.json()["code"] == "signal_not_allowed"
    made = send(
        client,
        "POST",
        "/v1/webhook-endpoints",
        key=key,
        body={"url": url, "events": ["*"], "signals": [acme.shared_signal.slug]},
    )
    assert made.status_code == 201, made.content
    endpoint_id = made.json()["data"]["id"]
    # It lists and reaches only its own: acme's two (every signal; acme-only-docs) are unknown.
    listed = send(client, "GET", "/v1/webhook-endpoints", key=key).json()["data"]
    assert [e["id"] for e in listed] == [endpoint_id]
    for other in acme.webhook_endpoint_ids:
        for method, suffix in (
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/rotate-secret"),
            ("POST", "/test"),
            ("GET", "/deliveries"),
        ):
            answer = send(
                client,
                method,
                f"/v1/webhook-endpoints/{other}{suffix}",
                key=key,
                body={"description": "taken"},
            )
            assert answer.status_code == 404, (method, suffix, answer.content)
            assert answer.json()["code"] == "webhook_endpoint_not_found"
    retry = send(
        client, "POST", f"/v1/webhook-deliveries/{acme.webhook_delivery_ids[0]}/retry", key=key
    )
    assert retry.status_code == 404 and retry.json()["code"] == "webhook_delivery_not_found"
    # Its own endpoint: changed, but never widened past the allow-list.
    path = f"/v1/webhook-endpoints/{endpoint_id}"
    for signals in ([], [acme.only_signal.slug]):
        widened = send(client, "PATCH", path, key=key, body={"signals": signals})
        assert widened.status_code == 403 and widened.json()["code"] == "signal_not_allowed"
    changed = send(client, "PATCH", path, key=key, body={"description": "mine"})
    assert changed.status_code == 200
    ping = send(client, "POST", f"{path}/test", key=key)
    assert ping.status_code == 202
    delivery = ping.json()["data"]["id"]
    assert send(client, "GET", f"{path}/deliveries", key=key).json()["data"][0]["id"] == delivery
    retried = send(client, "POST", f"/v1/webhook-deliveries/{delivery}/retry", key=key)
    assert retried.status_code == 202
    assert WebhookDelivery.objects.filter(endpoint__public_id=endpoint_id).count() == 1
    assert send(client, "DELETE", path, key=key).status_code == 200


def test_a_restricted_key_sees_and_resends_only_its_signals_deliveries_of_an_endpoint(
    acme: Org,
) -> None:
    # An endpoint that named both signals when the deliveries were made, then narrowed to the
    # allowed one: the older delivery of the other signal's event stays out of the key's reach.
    client = Client()
    full = acme.key
    made = send(
        client,
        "POST",
        "/v1/webhook-endpoints",
        key=full,
        body={
            "url": "https://93.184.215.14/both",
            "events": ["*"],
            "signals": [acme.shared_signal.slug, acme.only_signal.slug],
        },
    )
    assert made.status_code == 201, made.content
    endpoint_id = made.json()["data"]["id"]
    endpoint = WebhookEndpoint.objects.get(public_id=endpoint_id)
    ids = {}
    for signal in (acme.shared_signal, acme.only_signal):
        payload = ingest_payload(signal.slug, data={"page": "/p"}, reference=f"ref-{signal.slug}")
        answer = send(client, "POST", "/v1/events", key=full, body=payload)
        assert answer.status_code == 202, answer.content
        event_id = uuid.UUID(answer.json()["data"]["id"])
        delivery = WebhookDelivery.objects.create(
            organization=acme.tenant.organization,
            endpoint=endpoint,
            type="event.completed",
            event_id=event_id,
        )
        ids[signal.slug] = f"whevt_{delivery.pk.hex}"
    narrowed = send(
        client,
        "PATCH",
        f"/v1/webhook-endpoints/{endpoint_id}",
        key=full,
        body={"signals": [acme.shared_signal.slug]},
    )
    assert narrowed.status_code == 200, narrowed.content
    key = _restricted(acme)

    listed = send(client, "GET", f"/v1/webhook-endpoints/{endpoint_id}/deliveries", key=key)
    assert [d["id"] for d in listed.json()["data"]] == [ids[acme.shared_signal.slug]]
    hidden = send(
        client, "POST", f"/v1/webhook-deliveries/{ids[acme.only_signal.slug]}/retry", key=key
    )
    assert hidden.status_code == 404 and hidden.json()["code"] == "webhook_delivery_not_found"
    mine = send(
        client, "POST", f"/v1/webhook-deliveries/{ids[acme.shared_signal.slug]}/retry", key=key
    )
    assert mine.status_code == 202, mine.content
    # The full key still sees both.
    every = send(client, "GET", f"/v1/webhook-endpoints/{endpoint_id}/deliveries", key=full)
    assert {d["id"] for d in every.json()["data"]} == set(ids.values())


# --- Expiry -------------------------------------------------------------------------------------
def _expired_refusal(response: Any) -> None:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json() == {
        "success": False,
        "error": "API key has expired",
        "code": "expired_api_key",
    }


def test_an_expired_key_is_refused_like_a_revoked_one(acme: Org) -> None:
    from signals_app.models import ApiKey

    _, raw = api_key_create(
        organization=acme.tenant.organization,
        name="short",
        expires_at=timezone.now() + timedelta(days=1),
    )
    client = Client()
    assert send(client, "GET", "/v1/signals", key=raw).status_code == 200
    # Past its expiry (written as another process would; the services never shorten a key).
    ApiKey.objects.filter(name="short").update(expires_at=timezone.now() - timedelta(seconds=1))
    from signals_app.selectors import api_key_cache_invalidate
    from signals_app.services import api_key_hash

    api_key_cache_invalidate(key_hash=api_key_hash(raw))
    for method, path, body in (
        ("GET", "/v1/signals", None),
        ("POST", "/v1/events", ingest_payload(acme.shared_signal.slug)),
        ("POST", "/v1/events/batch", {"events": [ingest_payload(acme.shared_signal.slug)]}),
        ("GET", "/v1/webhook-endpoints", None),
    ):
        _expired_refusal(send(client, method, path, key=raw, body=body))


def test_a_cached_key_is_refused_the_moment_it_expires(
    acme: Org, monkeypatch: pytest.MonkeyPatch, django_assert_max_num_queries: Any
) -> None:
    expires = timezone.now() + timedelta(minutes=5)
    _, raw = api_key_create(organization=acme.tenant.organization, name="t", expires_at=expires)
    client = Client()
    sent = send(client, "POST", "/v1/events", key=raw, body=ingest_payload("shared-slug"))
    assert sent.status_code == 202  # the key's ref is cached now
    monkeypatch.setattr(timezone, "now", lambda: expires + timedelta(microseconds=1))
    # Decided in process from the cached ref: no query.
    with django_assert_max_num_queries(0):
        refused = send(client, "POST", "/v1/events", key=raw, body=ingest_payload("shared-slug"))
    _expired_refusal(refused)


def test_a_revoked_key_that_also_expired_says_revoked(acme: Org) -> None:
    from signals_app.models import ApiKey
    from signals_app.services import api_key_revoke

    _, raw = api_key_create(
        organization=acme.tenant.organization,
        name="both",
        expires_at=timezone.now() + timedelta(seconds=30),
    )
    api_key_revoke(api_key=ApiKey.objects.get(name="both"))
    ApiKey.objects.filter(name="both").update(expires_at=timezone.now() - timedelta(seconds=1))
    answer = send(Client(), "GET", "/v1/signals", key=raw)
    assert answer.status_code == 401 and answer.json()["code"] == "revoked_api_key"
