"""No redacted value is kept anywhere: events with marker values in redacted fields are ingested
through the HTTP stack (single, idempotent replay, batch, refused ones), processed, and
delivered to a real webhook receiver; then the whole database is dumped (pg_dump on PostgreSQL,
iterdump on SQLite), the shared cache and broker are read key by key (Redis) or file by file
(the embedded defaults), the log output is searched, and so are the webhook bodies received.
None may hold a marker; the dump and the webhook bodies must hold the hashed forms (so the test
fails if redaction were taken out). Modelled on test_key_storage.py."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from events_app.ingest.redaction import value_hash
from events_app.ingest.validation import event_request_parse
from events_app.models import Event, RejectedEvent, WebhookDelivery, WebhookEndpoint
from events_app.pipeline.processing import events_process
from events_app.webhooks.sending import endpoint_drain
from signals_app.services import api_key_create, organization_get_or_create
from tests.conftest import SEED_REQUEST, Tenant
from tests.security.conftest import send
from tests.security.test_key_storage import database_dump, encodings, shared_stores_dump
from tests.webhook_receiver import receiver_running

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_processor"),
]

SCHEMA = {
    "type": "object",
    "required": ["email", "ssn"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "ssn": {"type": "string"},
        "plan": {"type": "string"},
    },
}
RULES = [
    {"path": "/email", "mode": "hash"},
    {"path": "/ssn", "mode": "drop"},
    {"path": "/contact/phone", "mode": "hash"},
]


def markers() -> dict[str, str]:
    tag = uuid.uuid4().hex
    return {
        name: f"redact-marker-{name}-{tag}{suffix}"
        for name, suffix in (
            ("email", "@example.com"),
            ("ssn", ""),
            ("phone", ""),
            ("batch-email", "@example.com"),
            ("refused-email", ""),  # no "@": refused by the schema's format
            ("refused-ssn", ""),
        )
    }


def assert_absent(where: str, haystack: bytes, secrets: dict[str, str]) -> None:
    assert haystack, f"{where}: nothing to search"
    lowered = haystack.lower()
    for name, secret in secrets.items():
        for encoding, needle in encodings(secret):
            found = needle.lower() in lowered if encoding == "hex" else needle in haystack
            assert not found, f"the {name} marker ({encoding}) found in {where}"


def event_body(m: dict[str, str], email: str, ssn: str, **extra: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(SEED_REQUEST)) | {"signal": "signup"} | extra
    body["data"] = {"email": email, "ssn": ssn, "contact": {"phone": m["phone"]}, "plan": "pro"}
    return body


def test_no_redacted_value_is_kept_in_the_database_cache_broker_logs_or_webhooks(
    settings: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    m = markers()
    organization, _ = organization_get_or_create(slug="acme")
    _, raw_key = api_key_create(organization=organization, name="redaction")
    tenant = Tenant(organization=organization, api_key=None, raw_key=raw_key)  # type: ignore[arg-type]
    tenant.signal("signup", schema=SCHEMA, redact=RULES, rate_limit_per_minute=1000)
    api = Client()

    with receiver_running() as receiver:
        made = send(
            api,
            "POST",
            "/v1/webhook-endpoints",
            key=raw_key,
            body={"url": receiver.url, "events": ["*"]},
        )
        assert made.status_code == 201, made.content
        single = event_body(m, m["email"], m["ssn"], idempotency_key="redact-1")
        accepted = send(api, "POST", "/v1/events", key=raw_key, body=single)
        assert accepted.status_code == 202, accepted.content
        replayed = send(api, "POST", "/v1/events", key=raw_key, body=single)
        assert replayed.status_code == 200, replayed.content
        batch = send(
            api,
            "POST",
            "/v1/events/batch",
            key=raw_key,
            body={
                "events": [
                    event_body(m, m["batch-email"], m["ssn"]),
                    event_body(m, m["refused-email"], m["refused-ssn"]),
                ]
            },
        )
        assert batch.status_code == 207, batch.content
        refused = send(
            api,
            "POST",
            "/v1/events",
            key=raw_key,
            body=event_body(m, m["refused-email"], m["refused-ssn"]),
        )
        assert refused.status_code == 400, refused.content
        assert RejectedEvent.objects.count() == 2

        event_ids = [str(pk) for pk in Event.objects.values_list("pk", flat=True)]
        assert len(event_ids) == 2
        events_process(event_ids=event_ids)
        assert set(Event.objects.values_list("status", flat=True)) == {"completed"}
        endpoint = WebhookEndpoint.objects.get()
        owed = WebhookDelivery.objects.filter(endpoint=endpoint).count()
        assert owed >= 2  # a completion (and an insight) per event
        assert endpoint_drain(endpoint_id=endpoint.pk, time_budget=30) == owed
        received = receiver.wait_for(owed)

    hashed_email = value_hash(m["email"], organization_id=organization.pk)
    hashed_phone = value_hash(m["phone"], organization_id=organization.pk)
    # A plain SHA-256 of the request as sent (what an idempotency fingerprint would be without
    # redaction) could be reversed by a dictionary: it is nowhere either.
    plain_fingerprint = event_request_parse(single).fingerprint()
    secrets = {**m, "plain request fingerprint": plain_fingerprint}

    dump = database_dump()
    assert b"events_app_event" in dump and b"events_app_rejectedevent" in dump  # the real thing
    assert hashed_email.encode() in dump and hashed_phone.encode() in dump  # ...redacted
    assert_absent(f"the {connection.vendor} database dump", dump, secrets)
    for where, content in shared_stores_dump().items():
        assert_absent(where, content, secrets)

    bodies = b"\n".join(r.body for r in received)
    assert hashed_email.encode() in bodies
    assert_absent("the webhook bodies received", bodies, secrets)

    records = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.__dict__!r}" for r in caplog.records
    )
    assert_absent("log records", f"(logs) {records}".encode(), secrets)
    out, err = capfd.readouterr()
    assert_absent("stdout and stderr", f"(output) {out} {err}".encode(), secrets)
