"""Regression tests for problems a code review found (each named after what it guards)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from bigmind.cache import MISSING
from events_app.models import CrmRecord, Event
from signals_app.models import ApiKey, Signal
from signals_app.schemas import SchemaInvalid
from signals_app.selectors import lookups
from signals_app.services import schema_version_create
from tests.conftest import SEED_REQUEST, ApiClient, Tenant, signal_form

URL = "/v1/events"


def event(**overrides: object) -> dict:
    return {**json.loads(json.dumps(SEED_REQUEST)), **overrides}


# --- Schemas that data can drive into a corner -------------------------------------------------
def test_a_huge_integer_against_multiple_of_is_a_400_not_a_crash(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal(
        "money", schema={"properties": {"amount": {"type": "number", "multipleOf": 0.01}}}
    )
    body = (
        '{"signal": "money", "identity": {"type": "account", "id": "1"}, "data": {"amount": 1'
        + "0" * 400
        + "}}"
    )
    response = api.post_raw(URL, body)
    assert response.status_code == 400
    assert response.json()["code"] == "schema_validation_failed"
    assert response.json()["error"] == "data could not be checked against the schema"


def test_a_pathological_regex_value_is_a_400_not_a_crash(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("rx", schema={"properties": {"pattern": {"type": "string", "format": "regex"}}})
    for value in ("a{99999999999}", "(" * 3000):
        response = api.post(URL, event(signal="rx", data={"pattern": value}))
        assert response.status_code == 400, value


def test_a_schema_with_a_nested_id_is_refused(tenant: Tenant) -> None:
    signal = tenant.signal("nested")
    schema = {
        "$defs": {
            "top": {"type": "string"},
            "a": {"$id": "http://x.example/a", "properties": {"b": {"$ref": "#/$defs/top"}}},
        },
        "properties": {"p": {"$ref": "#/$defs/a"}},
    }
    with pytest.raises(SchemaInvalid, match=r"'\$id' is only supported at the top"):
        schema_version_create(signal=signal, schema=schema)


# --- Cache races --------------------------------------------------------------------------------
def test_a_reader_cannot_put_an_invalidated_entry_back() -> None:
    lookups.invalidate("k")
    lookups.clear_local()
    lookups.fill("k", "stale row read before the change", 300)
    lookups.clear_local()
    assert lookups.get("k") is MISSING


def test_a_key_revoked_behind_the_caches_back_is_refused_at_its_next_use_write(
    api: ApiClient, tenant: Tenant, monkeypatch
) -> None:
    from events_app.ingest import auth

    tenant.signal("visited-documentation-page")
    assert api.post(URL, SEED_REQUEST).status_code == 202  # cached as valid
    ApiKey.objects.filter(pk=tenant.api_key.pk).update(
        revoked_at=datetime.now(UTC)
    )  # no invalidation
    auth.api_key_last_used_reset()  # the per-minute write is due
    response = api.post(URL, SEED_REQUEST)
    assert response.status_code == 401
    assert response.json()["error"] == "API key has been revoked"


# --- Admin --------------------------------------------------------------------------------------
def _change_form(signal: Signal, **overrides: object) -> dict:
    current = {"name": signal.name, "slug": signal.slug, "type": signal.type}
    return signal_form(signal.organization, **(current | overrides))


def test_renaming_a_slug_in_the_admin_retires_the_old_slug_at_once(
    staff: Client, api: ApiClient, tenant: Tenant, django_capture_on_commit_callbacks
) -> None:
    signal = tenant.signal("old-slug")
    assert api.post(URL, event(signal="old-slug")).status_code == 202
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            f"/admin/signals_app/signal/{signal.pk}/change/", _change_form(signal, slug="new-slug")
        )
    assert response.status_code == 302
    lookups.clear_local()
    assert api.post(URL, event(signal="old-slug")).status_code == 404
    assert api.post(URL, event(signal="new-slug")).status_code == 202


def test_renaming_to_a_taken_slug_or_emptying_it_is_a_form_error(
    staff: Client, tenant: Tenant
) -> None:
    signal = tenant.signal("one")
    tenant.signal("two")
    for slug, message in (("two", "exists already"), ("", "cannot be emptied")):
        response = staff.post(
            f"/admin/signals_app/signal/{signal.pk}/change/", _change_form(signal, slug=slug)
        )
        assert response.status_code == 200
        assert message in response.content.decode()
    assert Signal.objects.get(pk=signal.pk).slug == "one"


def test_signals_cannot_be_deleted_in_the_admin(staff: Client, tenant: Tenant) -> None:
    signal = tenant.signal("keep")
    assert staff.get(f"/admin/signals_app/signal/{signal.pk}/delete/").status_code == 403


def test_changing_a_metric_to_an_event_in_the_admin_drops_the_metric_settings(
    staff: Client, tenant: Tenant
) -> None:
    signal = tenant.signal("calls", type="metric")
    response = staff.post(
        f"/admin/signals_app/signal/{signal.pk}/change/",
        _change_form(signal, type="event", aggregation="", period="", value_field=""),
    )
    assert response.status_code == 302, response.content.decode()[:1500]
    signal.refresh_from_db()
    assert (signal.type, signal.aggregation, signal.period, signal.value_field) == (
        "event",
        "",
        "",
        "",
    )


# --- Idempotency leaves records alone -------------------------------------------------------------
def test_a_conflicting_or_replayed_key_touches_no_crm_record(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page")
    a = event(identity={"type": "account", "id": "A"})
    assert api.post(URL, a, **{"Idempotency-Key": "k1"}).status_code == 202
    seen = CrmRecord.objects.get(external_id="A").last_seen_at
    b = event(identity={"type": "account", "id": "B"})
    assert api.post(URL, b, **{"Idempotency-Key": "k1"}).status_code == 409
    assert api.post(URL, a, **{"Idempotency-Key": "k1"}).status_code == 200
    assert list(CrmRecord.objects.values_list("external_id", flat=True)) == ["A"]
    assert CrmRecord.objects.get(external_id="A").last_seen_at == seen
    assert Event.objects.count() == 1


# --- Rate-limit headers ---------------------------------------------------------------------------
def test_retry_after_points_at_the_first_second_of_the_next_window(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("one-a-minute", rate_limit_per_minute=1)
    assert api.post(URL, event(signal="one-a-minute")).status_code == 202
    refused = api.post(URL, event(signal="one-a-minute"))
    assert refused.status_code == 429
    reset = datetime.strptime(refused["X-RateLimit-Reset"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    # The counter's window includes its last second; Reset names the second after it.
    window_end = int(time.time()) + int(refused["Retry-After"]) - 1
    assert abs(reset.timestamp() - (window_end + 1)) <= 1


def test_only_a_429_carries_retry_after(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("one-a-minute", rate_limit_per_minute=1)
    assert api.post(URL, event(signal="one-a-minute")).status_code == 202
    assert "Retry-After" in api.post(URL, event(signal="one-a-minute"))
    bad = api.post(URL, event(signal="one-a-minute", data=[]))
    assert bad.status_code == 400
    assert "Retry-After" not in bad
    assert bad["X-RateLimit-Remaining"] == "0"


# --- Exact forms ----------------------------------------------------------------------------------
def test_a_trailing_newline_in_identity_type_is_refused(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visited-documentation-page")
    response = api.post(URL, event(identity={"type": "account\n", "id": "1"}))
    assert response.status_code == 400
    assert response.json()["error"].startswith("identity.type ")


@pytest.mark.parametrize("key", ["", "   ", "a\x01b", "k" * 256])
def test_a_malformed_idempotency_key_header_is_refused(
    api: ApiClient, tenant: Tenant, key: str
) -> None:
    tenant.signal("visited-documentation-page")
    response = api.post(URL, SEED_REQUEST, **{"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"].startswith("Idempotency-Key header must be")
    assert Event.objects.count() == 0


def test_a_request_id_with_a_trailing_newline_is_replaced(api: ApiClient, tenant: Tenant) -> None:
    from bigmind.middleware import _SAFE_REQUEST_ID

    assert _SAFE_REQUEST_ID.fullmatch("abc\n") is None


# --- sync_signals and YAML ------------------------------------------------------------------------
def _sync(tmp_path: Path, text: str) -> str:
    path = tmp_path / "signals.yaml"
    path.write_text(text, encoding="utf-8")
    from io import StringIO

    out = StringIO()
    call_command("sync_signals", str(path), stdout=out)
    return out.getvalue()


def test_sync_refuses_yaml_values_json_cannot_hold(db, tmp_path: Path) -> None:
    text = "organization: acme\nsignals:\n  - slug: s\n    type: event\n    schemas:\n      - version: 1\n        schema: {default: 2024-01-01}\n"
    with pytest.raises(CommandError, match="quote dates"):
        _sync(tmp_path, text)


def test_sync_with_integer_keys_is_stable_on_a_second_run(db, tmp_path: Path) -> None:
    text = "organization: acme\nsignals:\n  - slug: s\n    type: event\n    schemas:\n      - version: 1\n        schema: {properties: {404: {type: string}}}\n"
    _sync(tmp_path, text)
    assert "unchanged s" in _sync(tmp_path, text)


def test_sync_takes_a_null_description_as_empty(db, tmp_path: Path) -> None:
    _sync(
        tmp_path,
        "organization: acme\nsignals:\n  - slug: s\n    type: event\n    description: null\n",
    )
    assert Signal.objects.get(slug="s").description == ""
