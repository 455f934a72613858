from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from bigmind.errors import BadRequest, Conflict, Unauthorized
from events_app.ingest.auth import api_key_authenticate
from signals_app.models import Organization, SchemaVersion, Signal
from signals_app.schemas import SchemaInvalid, schema_compile
from signals_app.selectors import signal_get_active_ref
from signals_app.services import (
    api_key_create,
    api_key_revoke,
    organization_get_or_create,
    schema_version_create,
    signal_create,
    signal_update,
)
from tests.conftest import Tenant

OBJECT_WITH_VALUE = {
    "type": "object",
    "required": ["value"],
    "properties": {"value": {"type": "number"}},
}


def make_signal(organization: Organization, name: str = "Visited page", **settings: Any) -> Signal:
    settings.setdefault("type", "event")
    return signal_create(organization=organization, name=name, **settings)


# --- signal_create: slugs and ids ---------------------------------------------------------------
def test_it_makes_the_slug_from_the_name(tenant: Tenant) -> None:
    signal = make_signal(tenant.organization, name="Visited Documentation Page!")
    assert signal.slug == "visited-documentation-page"


def test_it_numbers_a_slug_made_from_a_name_that_is_taken(tenant: Tenant) -> None:
    first = make_signal(tenant.organization, name="API calls")
    second = make_signal(tenant.organization, name="API calls")
    third = make_signal(tenant.organization, name="api  CALLS")
    assert [first.slug, second.slug, third.slug] == ["api-calls", "api-calls-2", "api-calls-3"]


def test_it_does_not_number_a_slug_taken_only_in_another_organization(
    make_tenant: Callable[[str], Tenant],
) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    make_signal(acme.organization, name="API calls")
    assert make_signal(globex.organization, name="API calls").slug == "api-calls"


def test_it_is_not_confused_by_a_longer_slug_that_starts_like_the_new_one(tenant: Tenant) -> None:
    make_signal(tenant.organization, name="API calls total")
    assert make_signal(tenant.organization, name="API calls").slug == "api-calls"


def test_it_makes_a_slug_for_a_name_with_no_latin_letters(tenant: Tenant) -> None:
    signal = make_signal(tenant.organization, name="日本")
    assert signal.slug == "signal"


def test_it_keeps_an_explicit_slug(tenant: Tenant) -> None:
    signal = make_signal(tenant.organization, name="Anything", slug="my_signal-1")
    assert signal.slug == "my_signal-1"


@pytest.mark.parametrize(
    "slug",
    [
        "has space",
        "Upper",
        "UPPER-CASE",
        "dots.in.it",
        "semi;colon",
        "-leading",
        "trailing-",
        "über",
        "a" * 101,
    ],
)
def test_it_refuses_an_explicit_slug_that_is_not_url_safe(tenant: Tenant, slug: str) -> None:
    with pytest.raises(BadRequest):
        make_signal(tenant.organization, slug=slug)
    assert not Signal.objects.exists()


def test_it_refuses_an_explicit_slug_that_exists_in_the_organization(tenant: Tenant) -> None:
    make_signal(tenant.organization, name="One", slug="dup")
    with pytest.raises(Conflict):
        make_signal(tenant.organization, name="Two", slug="dup")
    assert list(Signal.objects.values_list("name", flat=True)) == ["One"]


def test_it_accepts_the_same_explicit_slug_in_another_organization(
    make_tenant: Callable[[str], Tenant],
) -> None:
    make_signal(make_tenant("acme").organization, slug="dup")
    make_signal(make_tenant("globex").organization, slug="dup")
    assert Signal.objects.filter(slug="dup").count() == 2


def test_it_gives_each_signal_a_public_id_of_sig_and_eight_base62_characters(
    tenant: Tenant,
) -> None:
    ids = [make_signal(tenant.organization, name=f"Signal {n}").public_id for n in range(25)]
    assert all(re.fullmatch(r"sig_[A-Za-z0-9]{8}", public_id) for public_id in ids), ids
    assert len(set(ids)) == len(ids)


def test_it_refuses_a_name_that_is_blank(tenant: Tenant) -> None:
    with pytest.raises(BadRequest):
        make_signal(tenant.organization, name="   ")


def test_it_refuses_an_unknown_type(tenant: Tenant) -> None:
    with pytest.raises(BadRequest):
        make_signal(tenant.organization, type="counter")


def test_it_refuses_a_metric_without_aggregation_or_period(tenant: Tenant) -> None:
    with pytest.raises(BadRequest, match="aggregation"):
        make_signal(tenant.organization, type="metric", period="day")
    with pytest.raises(BadRequest, match="period"):
        make_signal(tenant.organization, type="metric", aggregation="sum")
    assert not Signal.objects.exists()


def test_it_gives_a_metric_the_value_field_value_by_default(tenant: Tenant) -> None:
    signal = make_signal(tenant.organization, type="metric", aggregation="avg", period="hour")
    assert (signal.aggregation, signal.period, signal.value_field) == ("avg", "hour", "value")


def test_it_refuses_metric_settings_on_an_event_signal(tenant: Tenant) -> None:
    with pytest.raises(BadRequest, match="metric signals only"):
        make_signal(tenant.organization, type="event", aggregation="sum")


@pytest.mark.parametrize("limit", [0, -1, True, "100", 1.5])
def test_it_refuses_a_rate_limit_that_is_not_a_positive_integer(tenant: Tenant, limit: Any) -> None:
    with pytest.raises(BadRequest, match="rate_limit_per_minute"):
        make_signal(tenant.organization, rate_limit_per_minute=limit)


def test_it_refuses_an_unknown_setting(tenant: Tenant) -> None:
    with pytest.raises(BadRequest, match="Unknown"):
        make_signal(tenant.organization, colour="blue")


# --- signal_update --------------------------------------------------------------------------
def test_it_refuses_to_rename_a_slug_to_one_that_exists(tenant: Tenant) -> None:
    make_signal(tenant.organization, slug="taken")
    signal = make_signal(tenant.organization, slug="mine")
    with pytest.raises(Conflict):
        signal_update(signal=signal, slug="taken")
    assert Signal.objects.filter(slug="mine").exists()


def test_it_clears_metric_settings_when_a_metric_becomes_an_event(tenant: Tenant) -> None:
    signal = tenant.signal("api-calls", type="metric")
    signal_update(signal=signal, type="event")
    signal.refresh_from_db()
    assert (signal.type, signal.aggregation, signal.period, signal.value_field) == (
        "event",
        "",
        "",
        "",
    )


def test_it_needs_aggregation_and_period_when_an_event_becomes_a_metric(tenant: Tenant) -> None:
    signal = tenant.signal("clicks")
    with pytest.raises(BadRequest):
        signal_update(signal=signal, type="metric")
    signal_update(signal=signal, type="metric", aggregation="count", period="week")
    signal.refresh_from_db()
    assert (signal.type, signal.aggregation, signal.period, signal.value_field) == (
        "metric",
        "count",
        "week",
        "value",
    )


# --- schema_version_create --------------------------------------------------------------------
def test_it_numbers_schema_versions_1_2_3_per_signal(tenant: Tenant) -> None:
    signal, other = tenant.signal("one"), tenant.signal("two")
    numbers = [
        schema_version_create(signal=signal, schema=OBJECT_WITH_VALUE).version for _ in range(3)
    ]
    assert numbers == [1, 2, 3]
    assert schema_version_create(signal=other, schema=OBJECT_WITH_VALUE).version == 1


def test_it_stores_the_schema_as_given(tenant: Tenant) -> None:
    signal = tenant.signal("one")
    version = schema_version_create(signal=signal, schema=OBJECT_WITH_VALUE)
    assert SchemaVersion.objects.get(pk=version.pk).schema == OBJECT_WITH_VALUE


@pytest.mark.parametrize(
    "declared",
    [
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    ],
)
def test_it_accepts_a_schema_that_declares_draft_2020_12(tenant: Tenant, declared: str) -> None:
    signal = tenant.signal("one")
    schema_version_create(signal=signal, schema={"$schema": declared, **OBJECT_WITH_VALUE})
    assert signal.schema_versions.count() == 1


@pytest.mark.parametrize(
    "declared",
    [
        "http://json-schema.org/draft-07/schema#",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-04/schema#",
    ],
)
def test_it_refuses_a_schema_of_another_draft(tenant: Tenant, declared: str) -> None:
    signal = tenant.signal("one")
    with pytest.raises(SchemaInvalid, match="2020-12"):
        schema_version_create(signal=signal, schema={"$schema": declared, **OBJECT_WITH_VALUE})
    assert not SchemaVersion.objects.exists()


def test_it_refuses_a_schema_whose_dollar_schema_is_not_a_string(tenant: Tenant) -> None:
    signal = tenant.signal("one")
    with pytest.raises(SchemaInvalid):
        schema_version_create(signal=signal, schema={"$schema": 2020, "type": "object"})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "objekt"},
        {"type": "object", "required": "value"},
        {"type": "object", "properties": {"value": {"minimum": "zero"}}},
        {"type": "object", "properties": []},
        ["not", "an", "object"],
        "object",
    ],
    ids=repr,
)
def test_it_refuses_a_schema_that_is_not_valid_json_schema(tenant: Tenant, schema: Any) -> None:
    signal = tenant.signal("one")
    with pytest.raises(SchemaInvalid):
        schema_version_create(signal=signal, schema=schema)
    assert not SchemaVersion.objects.exists()


@pytest.mark.parametrize(
    "ref",
    ["https://example.com/schemas/value.json", "value.json", "https://example.com/s.json#/$defs/v"],
)
def test_it_refuses_a_schema_with_a_remote_reference(tenant: Tenant, ref: str) -> None:
    signal = tenant.signal("one")
    schema = {"type": "object", "properties": {"value": {"$ref": ref}}}
    with pytest.raises(SchemaInvalid, match="local references"):
        schema_version_create(signal=signal, schema=schema)
    assert not SchemaVersion.objects.exists()


def test_it_refuses_a_remote_reference_nested_deep_in_the_schema(tenant: Tenant) -> None:
    signal = tenant.signal("one")
    schema = {"anyOf": [{"type": "null"}, {"items": [{"$dynamicRef": "https://example.com/x"}]}]}
    with pytest.raises(SchemaInvalid):
        schema_version_create(signal=signal, schema=schema)


def test_it_accepts_a_schema_with_a_local_reference(tenant: Tenant) -> None:
    signal = tenant.signal("one")
    schema = {
        "type": "object",
        "$defs": {"amount": {"type": "number"}},
        "properties": {"value": {"$ref": "#/$defs/amount"}},
    }
    assert schema_version_create(signal=signal, schema=schema).version == 1


def test_it_refuses_a_local_reference_that_points_nowhere(tenant: Tenant) -> None:
    signal = tenant.signal("one")
    schema = {"type": "object", "properties": {"value": {"$ref": "#/$defs/missing"}}}
    try:
        schema_version_create(signal=signal, schema=schema)
    except SchemaInvalid:
        return
    # Accepted: show what that costs on the ingest path instead of passing silently.
    list(schema_compile(schema).iter_errors({"value": 1}))
    pytest.fail("a schema with a dangling $ref was saved")


def test_it_refuses_a_backward_incompatible_version_when_compatibility_is_backward(
    tenant: Tenant,
) -> None:
    signal = tenant.signal("one", compatibility="backward", schema=OBJECT_WITH_VALUE)
    # A new required field: data valid under version 1 is not valid under version 2.
    incompatible = {
        "type": "object",
        "required": ["value", "unit"],
        "properties": {"value": {"type": "number"}, "unit": {"type": "string"}},
    }
    with pytest.raises(BadRequest):
        schema_version_create(signal=signal, schema=incompatible)


# --- cached lookups are invalidated on commit ------------------------------------------------
def test_the_signal_lookup_forgets_a_signal_once_it_is_deactivated(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    signal = tenant.signal("page-view")
    ref = signal_get_active_ref(organization_id=tenant.organization.pk, slug="page-view")
    assert ref is not None and ref.public_id == signal.public_id
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=signal, active=False)
    assert signal_get_active_ref(organization_id=tenant.organization.pk, slug="page-view") is None


def test_the_signal_lookup_finds_a_signal_again_once_it_is_reactivated(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    signal = tenant.signal("page-view", active=False)
    assert signal_get_active_ref(organization_id=tenant.organization.pk, slug="page-view") is None
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=signal, active=True)
    assert (
        signal_get_active_ref(organization_id=tenant.organization.pk, slug="page-view") is not None
    )


def test_the_signal_lookup_follows_a_slug_change(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    org_id = tenant.organization.pk
    signal = tenant.signal("old-name")
    assert signal_get_active_ref(organization_id=org_id, slug="old-name") is not None
    assert signal_get_active_ref(organization_id=org_id, slug="new-name") is None
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=signal, slug="new-name")
    assert signal_get_active_ref(organization_id=org_id, slug="old-name") is None
    ref = signal_get_active_ref(organization_id=org_id, slug="new-name")
    assert ref is not None and ref.id == signal.pk


def test_the_signal_lookup_sees_a_new_rate_limit(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    signal = tenant.signal("page-view")
    org_id = tenant.organization.pk
    assert (
        signal_get_active_ref(organization_id=org_id, slug="page-view").rate_limit_per_minute
        is None
    )  # type: ignore[union-attr]
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=signal, rate_limit_per_minute=5)
    assert (
        signal_get_active_ref(organization_id=org_id, slug="page-view").rate_limit_per_minute == 5
    )  # type: ignore[union-attr]


def test_the_signal_lookup_sees_a_new_schema_version(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    signal = tenant.signal("page-view")
    org_id = tenant.organization.pk
    assert signal_get_active_ref(organization_id=org_id, slug="page-view").latest_version is None  # type: ignore[union-attr]
    with django_capture_on_commit_callbacks(execute=True):
        schema_version_create(signal=signal, schema=OBJECT_WITH_VALUE)
    assert signal_get_active_ref(organization_id=org_id, slug="page-view").latest_version == 1  # type: ignore[union-attr]


def test_the_signal_lookup_finds_a_signal_created_after_its_slug_was_looked_up(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    org_id = tenant.organization.pk
    assert signal_get_active_ref(organization_id=org_id, slug="late") is None
    with django_capture_on_commit_callbacks(execute=True):
        tenant.signal("late")
    assert signal_get_active_ref(organization_id=org_id, slug="late") is not None


def test_the_signal_lookup_keeps_organizations_apart(make_tenant: Callable[[str], Tenant]) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    acme.signal("page-view")
    assert signal_get_active_ref(organization_id=globex.organization.pk, slug="page-view") is None
    assert signal_get_active_ref(organization_id=acme.organization.pk, slug="page-view") is not None


def test_a_revoked_key_stops_authenticating_even_after_it_was_cached(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    client = api_key_authenticate(raw_key=tenant.raw_key)
    assert client.organization_id == tenant.organization.pk
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=tenant.api_key)
    with pytest.raises(Unauthorized) as raised:
        api_key_authenticate(raw_key=tenant.raw_key)
    assert raised.value.code == "revoked_api_key"


def test_a_key_created_after_it_was_tried_authenticates(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    raw = "sk_" + "k" * 40
    with pytest.raises(Unauthorized):
        api_key_authenticate(raw_key=raw)
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(organization=tenant.organization, raw_key=raw)
    assert api_key_authenticate(raw_key=raw).organization_id == tenant.organization.pk


def test_revoking_a_key_twice_keeps_the_first_revocation_time(tenant: Tenant) -> None:
    first = api_key_revoke(api_key=tenant.api_key).revoked_at
    assert first is not None
    assert api_key_revoke(api_key=tenant.api_key).revoked_at == first


def test_it_refuses_an_organization_slug_that_is_not_url_safe(db: None) -> None:
    with pytest.raises(BadRequest):
        organization_get_or_create(slug="Acme Corp")
    assert not Organization.objects.exists()


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
