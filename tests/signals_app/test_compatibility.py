"""Schema compatibility modes (none, backward, forward, full), the schema diff and "try a payload".

The checker is tested three ways: tables of schema pairs with the exact reasons, the services
and entry points that must refuse an incompatible version (changing nothing), and a property
test that it never calls a pair compatible when an instance of the old schema breaks the new one.
"""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from signals_app.compatibility import (
    SchemaIncompatible,
    schema_compatibility_check,
    schema_compatibility_problems,
)
from signals_app.models import Organization, SchemaVersion, Signal
from signals_app.schemas import payload_try, schema_compile, schema_diff, schema_violations
from signals_app.services import schema_version_create, signal_update
from signals_app.signals_as_code import signals_sync
from tests.conftest import ApiClient, Tenant, signal_form


def problems(old: Any, new: Any, mode: str) -> list[str]:
    return schema_compatibility_problems(old=old, new=new, mode=mode, old_version=2)


def obj(properties: dict[str, Any], required: list[str] | None = None, **more: Any) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **more}
    if required:
        schema["required"] = required
    return schema


CLOSED = {"additionalProperties": False}
STRING = {"type": "string"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}

# --- backward: every instance of the old schema is an instance of the new one -----------------
BACKWARD_COMPATIBLE = {
    "an optional property added to a closed object": (
        obj({"a": STRING}, **CLOSED),
        obj({"a": STRING, "b": STRING}, **CLOSED),
    ),
    "a required property made optional": (
        obj({"a": STRING}, ["a"]),
        obj({"a": STRING}),
    ),
    "integer widened to number": (obj({"n": INTEGER}), obj({"n": NUMBER})),
    "a type made nullable": (obj({"s": STRING}), obj({"s": {"type": ["string", "null"]}})),
    "a maximum raised and a minimum lowered": (
        obj({"n": {"type": "integer", "minimum": 5, "maximum": 50}}),
        obj({"n": {"type": "integer", "minimum": 0, "maximum": 100}}),
    ),
    "an enum value added": (
        obj({"tier": {"enum": ["gold", "silver"]}}),
        obj({"tier": {"enum": ["gold", "silver", "bronze"]}}),
    ),
    "an enum replaced by the type of its values": (
        obj({"tier": {"enum": ["gold", "silver"]}}),
        obj({"tier": STRING}),
    ),
    "a const widened to an enum holding it": ({"const": "a"}, {"enum": ["a", "b"]}),
    "pattern, format and maxLength dropped": (
        {"type": "string", "pattern": "^a", "format": "email", "maxLength": 5},
        {"type": "string"},
    ),
    "additionalProperties false dropped": (obj({"a": STRING}, **CLOSED), obj({"a": STRING})),
    "array items widened and minItems lowered": (
        {"type": "array", "items": INTEGER, "minItems": 2, "uniqueItems": True},
        {"type": "array", "items": NUMBER, "minItems": 1},
    ),
    "prefixItems widened": (
        {"type": "array", "prefixItems": [INTEGER, STRING], "items": False},
        {"type": "array", "prefixItems": [NUMBER], "items": {"type": ["string", "null"]}},
    ),
    "an unchanged allOf beside a changed keyword": (
        {"allOf": [{"minimum": 1}], "maximum": 5},
        {"allOf": [{"minimum": 1}], "maximum": 10},
    ),
    "a $ref whose target widens": (
        {"$defs": {"n": INTEGER}, "properties": {"a": {"$ref": "#/$defs/n"}}},
        {"$defs": {"n": NUMBER}, "properties": {"a": {"$ref": "#/$defs/n"}}},
    ),
    "a recursive schema that gains an optional property": (
        {
            "$defs": {
                "node": obj({"name": STRING, "kids": {"type": "array", "items": {"$ref": "#"}}})
                | CLOSED
            },
            "$ref": "#/$defs/node",
        },
        {
            "$defs": {
                "node": obj(
                    {
                        "name": STRING,
                        "kids": {"type": "array", "items": {"$ref": "#"}},
                        "label": STRING,
                    }
                )
                | CLOSED
            },
            "$ref": "#/$defs/node",
        },
    ),
    "false to anything": (False, {"type": "string"}),
    "anything to true": ({"type": "string", "minLength": 3}, True),
    "a multipleOf relaxed to a divisor": (
        {"type": "integer", "multipleOf": 4},
        {"type": "integer", "multipleOf": 2},
    ),
    "exclusiveMinimum 0 to minimum 0": ({"exclusiveMinimum": 0}, {"minimum": 0}),
    "integers to multipleOf 1": (INTEGER, {"type": "number", "multipleOf": 1}),
    "booleans to an enum holding them": ({"type": "boolean"}, {"enum": [True, False, None]}),
    "a title and description added": (obj({"a": STRING}), obj({"a": STRING}, title="T")),
    "dependentRequired dropped": (
        {"dependentRequired": {"card": ["billing"]}},
        {},
    ),
}


@pytest.mark.parametrize(
    ("old", "new"), BACKWARD_COMPATIBLE.values(), ids=list(BACKWARD_COMPATIBLE)
)
def test_backward_accepts_a_new_version_that_reads_all_old_data(old: Any, new: Any) -> None:
    assert problems(old, new, "backward") == []


BACKWARD_INCOMPATIBLE = {
    "a type changed": (
        obj({"plan": STRING}),
        obj({"plan": INTEGER}),
        ["$.plan: type changed from string to integer"],
    ),
    "a new required property": (
        obj({"plan": STRING}),
        obj({"plan": STRING}, ["plan"]),
        ["$: new required property 'plan' (data written with version 2 may not have it)"],
    ),
    "an enum value removed": (
        obj({"tier": {"enum": ["gold", "silver"]}}),
        obj({"tier": {"enum": ["silver"]}}),
        ["$.tier (enum): value 'gold' no longer allowed"],
    ),
    "an object closed": (
        obj({"a": STRING}),
        obj({"a": STRING}, **CLOSED),
        ["$: additionalProperties false now refuses properties the old schema allowed"],
    ),
    "a maximum lowered": (
        obj({"count": {"type": "integer", "maximum": 100}}),
        obj({"count": {"type": "integer", "maximum": 50}}),
        ["$.count (maximum): lowered from 100 to 50"],
    ),
    "a minimum added": (NUMBER, {"type": "number", "minimum": 0}, ["$ (minimum): minimum 0 added"]),
    "a minimum turned exclusive": (
        {"minimum": 0},
        {"exclusiveMinimum": 0},
        ["$ (exclusiveMinimum): changed from minimum 0 to exclusiveMinimum 0"],
    ),
    "an exclusiveMaximum lowered": (
        {"exclusiveMaximum": 10},
        {"exclusiveMaximum": 9.5},
        ["$ (exclusiveMaximum): lowered from 10 to 9.5"],
    ),
    "string lengths narrowed": (
        {"type": "string", "minLength": 1},
        {"type": "string", "minLength": 2, "maxLength": 10},
        ["$ (minLength): raised from 1 to 2", "$ (maxLength): maxLength 10 added"],
    ),
    "a pattern added": (
        STRING,
        {"type": "string", "pattern": "^a"},
        ["$ (pattern): pattern '^a' added"],
    ),
    "a pattern changed": (
        {"type": "string", "pattern": "^a"},
        {"type": "string", "pattern": "^ab"},
        ["$ (pattern): changed from '^a' to '^ab'"],
    ),
    "a format added": (
        STRING,
        {"type": "string", "format": "email"},
        ["$ (format): format 'email' added"],
    ),
    "a multipleOf narrowed": (
        {"type": "integer", "multipleOf": 2},
        {"type": "integer", "multipleOf": 4},
        ["$ (multipleOf): changed from 2 to 4"],
    ),
    "a float multipleOf is never proven": (
        {"multipleOf": 0.3},
        {"multipleOf": 0.1},
        ["$ (multipleOf): changed from 0.3 to 0.1"],
    ),
    "array items narrowed": (
        {"type": "array", "items": NUMBER},
        {"type": "array", "items": INTEGER},
        ["$[*]: type changed from number to integer"],
    ),
    "a prefixItems position narrowed": (
        {"type": "array", "prefixItems": [STRING]},
        {"type": "array", "prefixItems": [{"type": "string", "maxLength": 3}]},
        ["$[0] (maxLength): maxLength 3 added"],
    ),
    "array sizes narrowed and uniqueItems added": (
        {"type": "array", "maxItems": 10},
        {"type": "array", "minItems": 1, "maxItems": 5, "uniqueItems": True},
        [
            "$ (minItems): minItems 1 added",
            "$ (maxItems): lowered from 10 to 5",
            "$ (uniqueItems): uniqueItems added",
        ],
    ),
    "a const changed": ({"const": "a"}, {"const": "b"}, ["$ (const): value 'a' no longer allowed"]),
    "a property removed from a closed object": (
        obj({"a": STRING, "b": STRING}, **CLOSED),
        obj({"a": STRING}, **CLOSED),
        [
            "$.b: property 'b' removed while additionalProperties is false "
            "(data written with version 2 may have it)"
        ],
    ),
    "a constrained property added to an open object": (
        obj({"value": NUMBER}, ["value"]),
        obj({"value": NUMBER, "region": STRING}, ["value"]),
        [
            "$.region: new property 'region' is constrained, but version 2 allowed "
            "any value under that name (its additionalProperties are open)"
        ],
    ),
    "a nested object narrowed": (
        obj({"address": obj({"zip": STRING})}),
        obj({"address": obj({"zip": STRING}, ["zip"])}),
        ["$.address: new required property 'zip' (data written with version 2 may not have it)"],
    ),
    "an allOf changed": (
        {"allOf": [{"minimum": 1}]},
        {"allOf": [{"minimum": 2}]},
        ["$: cannot prove compatibility of allOf; use compatibility none to add this version"],
    ),
    "an if/then/else added": (
        {},
        {"if": {"required": ["a"]}, "then": {"required": ["b"]}},
        ["$: cannot prove compatibility of if; use compatibility none to add this version"],
    ),
    "patternProperties changed": (
        {"patternProperties": {"^x": STRING}},
        {"patternProperties": {"^x": INTEGER}},
        [
            "$: cannot prove compatibility of patternProperties; "
            "use compatibility none to add this version"
        ],
    ),
    "an unevaluatedProperties beside a change": (
        {"properties": {"a": STRING}, "unevaluatedProperties": False},
        {"properties": {"b": STRING}, "unevaluatedProperties": False},
        [
            "$.b: new property 'b' is constrained, but version 2 allowed any value "
            "under that name (its additionalProperties are open)",
            "$: cannot prove compatibility of unevaluatedProperties; "
            "use compatibility none to add this version",
        ],
    ),
    "a $ref whose target narrows": (
        {"$defs": {"n": NUMBER}, "properties": {"a": {"$ref": "#/$defs/n"}}},
        {"$defs": {"n": INTEGER}, "properties": {"a": {"$ref": "#/$defs/n"}}},
        ["$.a: type changed from number to integer"],
    ),
    "a $ref added": (
        {"properties": {"a": NUMBER}, "$defs": {"n": NUMBER}},
        {"properties": {"a": {"$ref": "#/$defs/n", "minimum": 0}}, "$defs": {"n": NUMBER}},
        [
            "$.a (minimum): minimum 0 added",
            "$.a: cannot prove compatibility of $ref; use compatibility none to add this version",
        ],
    ),
    "everything refused": (STRING, False, ["$: the new version refuses every value here"]),
    "anything narrowed to objects": (
        True,
        {"type": "object"},
        ["$: type changed from any type to object"],
    ),
    "a type list narrowed": (
        {"type": ["string", "null"]},
        STRING,
        ["$: type changed from [string, null] to string"],
    ),
    "number to integer": (NUMBER, INTEGER, ["$: type changed from number to integer"]),
    "booleans narrowed": (
        {"type": "boolean"},
        {"const": True},
        ["$: value false no longer allowed"],
    ),
    "a dependentRequired added": (
        {},
        {"dependentRequired": {"card": ["billing"]}},
        ["$ (dependentRequired): 'billing' now required when 'card' is present"],
    ),
    "an enum added to a string": (
        STRING,
        {"enum": ["a", "b"]},
        ["$ (enum): enum ['a', 'b'] added"],
    ),
}


@pytest.mark.parametrize(
    ("old", "new", "reasons"), BACKWARD_INCOMPATIBLE.values(), ids=list(BACKWARD_INCOMPATIBLE)
)
def test_backward_refuses_a_new_version_that_cannot_read_old_data_with_the_reasons(
    old: Any, new: Any, reasons: list[str]
) -> None:
    assert problems(old, new, "backward") == reasons


# --- forward: every instance of the new schema is an instance of the old one ------------------
FORWARD_COMPATIBLE = {
    "a new required property": (obj({"plan": STRING}), obj({"plan": STRING}, ["plan"])),
    "a maximum lowered": ({"maximum": 100}, {"maximum": 50}),
    "an enum value removed": ({"enum": ["gold", "silver"]}, {"enum": ["silver"]}),
    "an object closed": (obj({"a": STRING}), obj({"a": STRING}, **CLOSED)),
    "number narrowed to integer": (NUMBER, INTEGER),
    "a constrained property added to an open object": (
        obj({"value": NUMBER}),
        obj({"value": NUMBER, "region": STRING}),
    ),
    "a pattern added": (STRING, {"type": "string", "pattern": "^a"}),
}


@pytest.mark.parametrize(("old", "new"), FORWARD_COMPATIBLE.values(), ids=list(FORWARD_COMPATIBLE))
def test_forward_accepts_a_new_version_whose_data_old_readers_accept(old: Any, new: Any) -> None:
    assert problems(old, new, "forward") == []


FORWARD_INCOMPATIBLE = {
    "a required property made optional": (
        obj({"plan": STRING}, ["plan"]),
        obj({"plan": STRING}),
        ["$: property 'plan' is no longer required (version 2 requires it)"],
    ),
    "a maximum raised": (
        obj({"count": {"maximum": 50}}),
        obj({"count": {"maximum": 100}}),
        ["$.count (maximum): raised from 50 to 100"],
    ),
    "an enum value added": (
        obj({"tier": {"enum": ["silver"]}}),
        obj({"tier": {"enum": ["silver", "gold"]}}),
        ["$.tier (enum): value 'gold' now allowed, but version 2 refuses it"],
    ),
    "an object opened": (
        obj({"a": STRING}, **CLOSED),
        obj({"a": STRING}),
        [
            "$: additionalProperties false removed; version 2 refuses properties the new "
            "version allows"
        ],
    ),
    "a property added to a closed object": (
        obj({"a": STRING}, **CLOSED),
        obj({"a": STRING, "b": STRING}, **CLOSED),
        ["$.b: new property 'b', but version 2 has additionalProperties false and refuses it"],
    ),
    "a constrained property removed from an open object": (
        obj({"a": STRING, "b": STRING}),
        obj({"a": STRING}),
        [
            "$.b: property 'b' removed, so the new version allows any value under "
            "that name, which version 2 constrains"
        ],
    ),
    "integer widened to number": (INTEGER, NUMBER, ["$: type changed from integer to number"]),
    "a pattern dropped": (
        {"type": "string", "pattern": "^a"},
        STRING,
        ["$ (pattern): pattern '^a' removed"],
    ),
    "a minimum lowered": ({"minimum": 5}, {"minimum": 0}, ["$ (minimum): lowered from 5 to 0"]),
    "a dependentRequired dropped": (
        {"dependentRequired": {"card": ["billing"]}},
        {},
        [
            "$ (dependentRequired): 'billing' no longer required when 'card' is present "
            "(version 2 requires it)"
        ],
    ),
    "everything allowed": (
        False,
        STRING,
        ["$: version 2 refuses every value the new one allows here"],
    ),
}


@pytest.mark.parametrize(
    ("old", "new", "reasons"), FORWARD_INCOMPATIBLE.values(), ids=list(FORWARD_INCOMPATIBLE)
)
def test_forward_refuses_a_new_version_old_readers_cannot_read_with_the_reasons(
    old: Any, new: Any, reasons: list[str]
) -> None:
    assert problems(old, new, "forward") == reasons


# --- full and none ---------------------------------------------------------------------------
def test_full_accepts_a_change_that_keeps_the_same_data() -> None:
    old = obj({"a": STRING}, ["a"], **CLOSED)
    new = obj({"a": STRING}, ["a"], description="Now documented", **CLOSED)
    assert problems(old, new, "full") == []


@pytest.mark.parametrize(
    ("old", "new", "reasons"),
    [
        (
            obj({"count": {"maximum": 50}}),
            obj({"count": {"maximum": 100}}),
            ["$.count (maximum): raised from 50 to 100"],
        ),
        (
            obj({"count": {"maximum": 100}}),
            obj({"count": {"maximum": 50}}),
            ["$.count (maximum): lowered from 100 to 50"],
        ),
        (
            obj({"a": STRING}, **CLOSED),
            obj({"a": STRING, "b": STRING}, **CLOSED),
            ["$.b: new property 'b', but version 2 has additionalProperties false and refuses it"],
        ),
    ],
    ids=["wider only", "narrower only", "optional property on a closed object"],
)
def test_full_refuses_a_change_either_way_with_the_reasons(
    old: Any, new: Any, reasons: list[str]
) -> None:
    assert problems(old, new, "full") == reasons


def test_full_gives_a_change_both_directions_see_once() -> None:
    assert problems(obj({"plan": STRING}), obj({"plan": INTEGER}), "full") == [
        "$.plan: type changed from string to integer"
    ]


@pytest.mark.parametrize("mode", ["none", "backward", "forward", "full"])
def test_identical_schemas_are_compatible_in_every_mode(mode: str) -> None:
    schema = {"$dynamicRef": "#meta", "$defs": {"m": {"$dynamicAnchor": "meta"}}}
    assert problems(schema, json.loads(json.dumps(schema)), mode) == []


def test_none_accepts_any_change() -> None:
    assert problems(STRING, False, "none") == []


def test_an_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="sideways"):
        problems(STRING, STRING, "sideways")


def test_a_reason_carries_its_path_and_message_apart() -> None:
    (problem,) = schema_compatibility_check(
        old=obj({"plan": STRING}), new=obj({"plan": INTEGER}), mode="backward"
    )
    assert problem.as_detail() == {
        "path": "$.plan",
        "message": "type changed from string to integer",
        "keyword": "",
    }


def test_a_reason_about_one_keyword_names_it_apart_from_the_path() -> None:
    (problem,) = schema_compatibility_check(
        old=obj({"tier": {"enum": ["gold", "silver"]}}),
        new=obj({"tier": {"enum": ["silver"]}}),
        mode="backward",
    )
    assert problem.as_detail() == {
        "path": "$.tier",
        "message": "value 'gold' no longer allowed",
        "keyword": "enum",
    }
    assert str(problem) == "$.tier (enum): value 'gold' no longer allowed"


def test_array_items_and_unnamed_properties_have_their_own_paths() -> None:
    old = obj({"tags": {"type": "array", "prefixItems": [STRING], "items": STRING}})
    new = obj({"tags": {"type": "array", "prefixItems": [INTEGER], "items": INTEGER}})
    assert problems(old, new, "backward") == [
        "$.tags[0]: type changed from string to integer",
        "$.tags[*]: type changed from string to integer",
    ]
    old = {"type": "object", "additionalProperties": STRING}
    new = {"type": "object", "additionalProperties": INTEGER}
    assert problems(old, new, "backward") == ["$.*: type changed from string to integer"]


def test_without_a_version_number_the_old_side_is_the_previous_version() -> None:
    assert schema_compatibility_problems(old=obj({}), new=obj({}, ["a"]), mode="backward") == [
        "$: new required property 'a' (data written with the previous version may not have it)"
    ]


def test_a_huge_enum_is_reported_in_bounded_size() -> None:
    reasons = problems({"enum": list(range(200))}, {"enum": [0]}, "backward")
    assert len(reasons) == 50
    assert reasons[-1] == "$: ... 150 more"


def test_property_names_that_are_not_identifiers_are_quoted_in_paths() -> None:
    assert problems(obj({"a/b~": STRING}), obj({"a/b~": INTEGER}), "backward") == [
        "$['a/b~']: type changed from string to integer"
    ]


def test_a_reference_loop_that_never_reaches_a_child_is_not_proven() -> None:
    old = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    new = {**old, "title": "x", "$defs": {**old["$defs"], "c": {}}, "minimum": 1}
    assert any("cannot prove compatibility of $ref" in r for r in problems(old, new, "backward"))


# --- the services refuse an incompatible version and save nothing -----------------------------
def test_the_service_refuses_an_incompatible_version_with_the_reasons_and_saves_nothing(
    tenant: Tenant,
) -> None:
    signal = tenant.signal("plan", compatibility="backward", schema=obj({"plan": STRING}))
    with pytest.raises(SchemaIncompatible) as caught:
        schema_version_create(signal=signal, schema=obj({"plan": INTEGER}, ["plan"]))
    error = caught.value
    assert error.status_code == 400
    assert error.code == "schema_incompatible"
    assert error.message == (
        "Schema version 2 of signal plan is not backward compatible with version 1"
    )
    assert error.details == [
        {
            "path": "$",
            "message": "new required property 'plan' (data written with version 1 may not have it)",
            "keyword": "",
        },
        {"path": "$.plan", "message": "type changed from string to integer", "keyword": ""},
    ]
    assert list(signal.schema_versions.values_list("version", flat=True)) == [1]


def test_the_service_adds_a_compatible_version(tenant: Tenant) -> None:
    signal = tenant.signal("plan", compatibility="full", schema=obj({"plan": STRING}))
    version = schema_version_create(signal=signal, schema=obj({"plan": STRING}, title="Plan"))
    assert version.version == 2


def test_a_forward_signal_takes_a_new_required_property_and_refuses_dropping_one(
    tenant: Tenant,
) -> None:
    signal = tenant.signal("plan", compatibility="forward", schema=obj({"plan": STRING}))
    schema_version_create(signal=signal, schema=obj({"plan": STRING}, ["plan"]))
    with pytest.raises(SchemaIncompatible, match="not forward compatible with version 2"):
        schema_version_create(signal=signal, schema=obj({"plan": STRING}))
    assert signal.schema_versions.count() == 2


def test_a_full_signal_says_fully_compatible(tenant: Tenant) -> None:
    signal = tenant.signal("plan", compatibility="full", schema=obj({"n": {"maximum": 5}}))
    with pytest.raises(SchemaIncompatible, match=r"not fully \(backward and forward\) compatible"):
        schema_version_create(signal=signal, schema=obj({"n": {"maximum": 6}}))


def test_a_signal_without_compatibility_takes_any_version(tenant: Tenant) -> None:
    signal = tenant.signal("plan", schema=obj({"plan": STRING}))
    assert schema_version_create(signal=signal, schema=INTEGER).version == 2


def test_the_first_version_is_never_checked(tenant: Tenant) -> None:
    signal = tenant.signal("plan", compatibility="full")
    assert schema_version_create(signal=signal, schema=obj({"plan": STRING})).version == 1


def test_only_the_latest_version_is_compared_as_in_confluent(tenant: Tenant) -> None:
    signal = tenant.signal("n", schema={"type": "number"})
    schema_version_create(signal=signal, schema={"type": "integer"})  # mode none: allowed
    signal = signal_update(signal=signal, compatibility="backward")
    # Compatible with version 2, though version 1's data (1.5) would not be valid.
    assert schema_version_create(signal=signal, schema={"type": "integer"}).version == 3


def test_the_stored_mode_decides_not_a_stale_instance(tenant: Tenant) -> None:
    signal = tenant.signal("plan", schema=obj({"plan": STRING}))
    signal_update(signal=signal, compatibility="backward")
    # `signal` still says "none"; the row says "backward".
    with pytest.raises(SchemaIncompatible):
        schema_version_create(signal=signal, schema=obj({"plan": INTEGER}))


# --- signals as code --------------------------------------------------------------------------
def sync_document(*schemas: Any, compatibility: str = "backward", **more: Any) -> dict:
    return {
        "organization": "acme",
        "signals": [
            {
                "slug": "plan",
                "name": "Plan",
                "type": "event",
                "compatibility": compatibility,
                "schemas": [{"version": n, "schema": s} for n, s in enumerate(schemas, 1)],
                **more,
            }
        ],
    }


def control_plane() -> dict[str, list]:
    return {
        "organizations": list(Organization.objects.values_list("slug", flat=True)),
        "signals": list(
            Signal.objects.values("slug", "description", "compatibility", "updated_at")
        ),
        "versions": list(SchemaVersion.objects.values_list("signal__slug", "version", "schema")),
    }


def test_sync_refuses_an_incompatible_version_of_a_new_signal_and_creates_nothing(db: None) -> None:
    with pytest.raises(SchemaIncompatible) as caught:
        signals_sync(document=sync_document(obj({"plan": STRING}), obj({"plan": INTEGER})))
    assert caught.value.details == [
        {"path": "$.plan", "message": "type changed from string to integer", "keyword": ""}
    ]
    assert control_plane() == {"organizations": [], "signals": [], "versions": []}


def test_sync_signals_refuses_an_incompatible_version_and_changes_nothing(
    db: None, tmp_path: Any
) -> None:
    signals_sync(document=sync_document(obj({"plan": STRING})))
    before = control_plane()
    path = tmp_path / "signals.json"
    path.write_text(
        json.dumps(
            sync_document(obj({"plan": STRING}), obj({"plan": INTEGER}), description="changed")
        )
    )
    with pytest.raises(CommandError, match="not backward compatible with version 1"):
        call_command("sync_signals", str(path))
    assert control_plane() == before


def test_sync_adds_a_compatible_version(db: None) -> None:
    signals_sync(document=sync_document(obj({"plan": STRING}, **CLOSED)))
    document = sync_document(
        obj({"plan": STRING}, **CLOSED), obj({"plan": STRING, "tier": STRING}, **CLOSED)
    )
    assert signals_sync(document=document).versions_added == ["plan v2"]


def test_sync_applies_the_files_mode_before_its_new_versions(db: None) -> None:
    signals_sync(document=sync_document(obj({"plan": STRING})))
    document = sync_document(obj({"plan": STRING}), obj({"plan": INTEGER}), compatibility="none")
    assert signals_sync(document=document).versions_added == ["plan v2"]


# --- the admin shows the reasons next to the field ---------------------------------------------
@pytest.fixture
def org(db: None) -> Organization:
    return Organization.objects.create(slug="acme", name="Acme")


def change_form(signal: Signal, **overrides: Any) -> dict:
    form = signal_form(signal.organization, slug=signal.slug, compatibility="backward")
    form.update(overrides)
    versions = list(signal.schema_versions.all())
    form["schema_versions-TOTAL_FORMS"] = form["schema_versions-INITIAL_FORMS"] = str(len(versions))
    for index, version in enumerate(versions):
        form[f"schema_versions-{index}-id"] = str(version.pk)
        form[f"schema_versions-{index}-signal"] = str(signal.pk)
    return form


def admin_signal(staff: Client, org: Organization, schema: dict, compatibility: str) -> Signal:
    response = staff.post(
        "/admin/signals_app/signal/add/",
        signal_form(org, compatibility=compatibility, new_schema=json.dumps(schema)),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return Signal.objects.get()


def test_the_admin_shows_why_a_new_version_is_incompatible_and_saves_nothing(
    staff: Client, org: Organization
) -> None:
    signal = admin_signal(staff, org, obj({"plan": STRING}), "backward")
    before = control_plane()
    form = change_form(
        signal, description="changed", new_schema=json.dumps(obj({"plan": INTEGER}, ["plan"]))
    )
    response = staff.post(f"/admin/signals_app/signal/{signal.pk}/change/", form)
    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert (
        "Schema version 2 of signal visited-documentation-page is not backward compatible" in page
    )
    assert "$: new required property 'plan' (data written with version 1 may not have it)" in page
    assert "$.plan: type changed from string to integer" in page
    assert control_plane() == before


def test_the_admin_checks_against_the_mode_the_form_sets(staff: Client, org: Organization) -> None:
    signal = admin_signal(staff, org, obj({"plan": STRING}), "backward")
    form = change_form(signal, compatibility="none", new_schema=json.dumps(obj({"plan": INTEGER})))
    response = staff.post(f"/admin/signals_app/signal/{signal.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert signal.schema_versions.count() == 2

    form = change_form(signal, compatibility="full", new_schema=json.dumps(obj({"plan": NUMBER})))
    response = staff.post(f"/admin/signals_app/signal/{signal.pk}/change/", form)
    assert response.status_code == 200
    assert "$: type changed" not in html.unescape(response.content.decode())
    assert "type changed from integer to number" in html.unescape(response.content.decode())
    assert signal.schema_versions.count() == 2


def test_the_admin_adds_a_compatible_version(staff: Client, org: Organization) -> None:
    signal = admin_signal(staff, org, obj({"plan": STRING}, **CLOSED), "backward")
    form = change_form(
        signal, new_schema=json.dumps(obj({"plan": STRING, "tier": STRING}, **CLOSED))
    )
    response = staff.post(f"/admin/signals_app/signal/{signal.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert signal.schema_versions.count() == 2


# --- schema_diff --------------------------------------------------------------------------------
def test_the_diff_shows_each_changed_line_under_the_callers_labels() -> None:
    diff = schema_diff(
        old={"type": "object", "required": ["a"]},
        new={"required": ["a", "b"], "type": "object"},
        old_label="version 1",
        new_label="version 2",
    )
    assert diff == (
        "--- version 1\n"
        "+++ version 2\n"
        "@@ -1,6 +1,7 @@\n"
        " {\n"
        '   "required": [\n'
        '-    "a"\n'
        '+    "a",\n'
        '+    "b"\n'
        "   ],\n"
        '   "type": "object"\n'
        " }\n"
    )


def test_the_diff_ignores_key_order() -> None:
    assert schema_diff(old={"a": 1, "b": 2}, new={"b": 2, "a": 1}) == ""


def test_the_diff_of_a_first_version_adds_every_line() -> None:
    diff = schema_diff(old=None, new={"type": "object"}, new_label="version 1")
    assert diff.splitlines() == [
        "--- (none)",
        "+++ version 1",
        "@@ -0,0 +1,3 @@",
        "+{",
        '+  "type": "object"',
        "+}",
    ]


# --- payload_try ---------------------------------------------------------------------------------
PAGE = {
    "type": "object",
    "required": ["page"],
    "properties": {"page": {"type": "string"}, "seconds": {"type": "integer", "minimum": 0}},
}


def test_a_valid_sample_has_no_violations() -> None:
    assert payload_try(schema=PAGE, payload_text='{"page": "/docs", "seconds": 3}') == (True, [])


def test_a_sample_gets_the_violations_ingest_gives(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("page", schema=PAGE)
    data = {"seconds": -1, "extra": [1]}
    valid, violations = payload_try(schema=PAGE, payload_text=json.dumps(data))
    assert not valid
    assert [(v["path"], v["keyword"]) for v in violations] == [
        ("$", "required"),
        ("$.seconds", "minimum"),
    ]
    response = api.post(
        "/v1/events/validate",
        {"signal": "page", "identity": {"type": "account", "id": "1"}, "data": data},
    )
    assert response.status_code == 400
    assert response.json()["details"] == violations
    assert violations == schema_violations(schema_compile(PAGE), data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "The sample is not valid JSON: "),
        ("", "The sample is empty; send a JSON object"),
        ('{"page": "a", "page": "b"}', "The sample is not valid JSON: duplicate key 'page'"),
        ('{"page": NaN}', "The sample is not valid JSON: NaN is not a JSON number"),
        ('["a"]', "data must be a JSON object"),
        ('{"page": "\\u0000"}', "The sample contains a NUL character"),
    ],
)
def test_a_sample_that_is_not_acceptable_json_is_one_violation_at_the_root(
    text: str, message: str
) -> None:
    valid, violations = payload_try(schema=PAGE, payload_text=text)
    assert not valid
    assert len(violations) == 1
    assert violations[0]["path"] == "$"
    assert violations[0]["message"].startswith(message)


def test_a_sample_over_the_body_limit_is_refused_unread(settings: Any) -> None:
    settings.BIGMIND_EVENT_MAX_BODY_BYTES = 10
    valid, violations = payload_try(schema=PAGE, payload_text='{"page": "/docs/long"}')
    assert not valid
    assert violations[0]["message"] == "The sample is 22 bytes; at most 10 are accepted"


# --- property: the checker never calls an incompatible pair compatible -----------------------
NAMES = ["a", "b", "c"]
SCALARS = st.sampled_from([None, True, False, 0, 1, -2, 7, 2.5, "", "a", "ab", "abc", "b"])


def leaf_schemas() -> st.SearchStrategy[Any]:
    number = st.fixed_dictionaries(
        {"type": st.sampled_from(["integer", "number", ["integer", "null"]])},
        optional={
            "minimum": st.integers(-3, 3),
            "maximum": st.integers(-3, 8),
            "exclusiveMaximum": st.integers(0, 8),
            "multipleOf": st.sampled_from([1, 2, 3]),
        },
    )
    string = st.fixed_dictionaries(
        {"type": st.sampled_from(["string", ["string", "null"]])},
        optional={
            "minLength": st.integers(0, 2),
            "maxLength": st.integers(0, 3),
            "pattern": st.sampled_from(["^a", "b"]),
        },
    )
    enum = st.fixed_dictionaries(
        {"enum": st.lists(SCALARS, min_size=1, max_size=4, unique_by=json.dumps)}
    )
    const = st.fixed_dictionaries({"const": SCALARS})
    simple = st.fixed_dictionaries(
        {"type": st.sampled_from(["boolean", "null", "string", "array"])}
    )
    return st.one_of(number, string, enum, const, simple, st.just(True), st.just({}))


def schemas(depth: int = 2) -> st.SearchStrategy[Any]:
    if depth == 0:
        return leaf_schemas()
    child = schemas(depth - 1)
    objects = st.builds(
        lambda props, required, closed: {
            "type": "object",
            "properties": props,
            **({"required": sorted(required)} if required else {}),
            **({"additionalProperties": False} if closed else {}),
        },
        st.dictionaries(st.sampled_from(NAMES), child, max_size=3),
        st.sets(st.sampled_from(NAMES), max_size=2),
        st.booleans(),
    )
    arrays = st.fixed_dictionaries(
        {"type": st.just("array"), "items": child},
        optional={"maxItems": st.integers(0, 3), "minItems": st.integers(0, 2)},
    )
    return st.one_of(leaf_schemas(), objects, objects, arrays)


def mutated(schema: Any) -> st.SearchStrategy[Any]:
    """Small edits of a schema, so that many pairs are compatible (random pairs rarely are)."""
    if not isinstance(schema, dict):
        return schemas(1)
    edits: list[st.SearchStrategy[Any]] = [st.just(schema)]
    for key in list(schema):
        edits.append(st.just({k: v for k, v in schema.items() if k != key}))
    for key in ("minimum", "maximum", "minLength", "maxLength", "maxItems"):
        if key in schema:
            edits.append(st.integers(-3, 8).map(lambda n, key=key: {**schema, key: n}))
    if "enum" in schema:
        edits.append(SCALARS.map(lambda v: {**schema, "enum": [*schema["enum"], v]}))
    if schema.get("type") == "integer":
        edits.append(st.just({**schema, "type": "number"}))
    if "properties" in schema:
        for name, sub in schema["properties"].items():
            edits.append(
                mutated(sub).map(
                    lambda s, name=name: {**schema, "properties": {**schema["properties"], name: s}}
                )
            )
        edits.append(
            leaf_schemas().map(lambda s: {**schema, "properties": {**schema["properties"], "c": s}})
        )
        edits.append(st.just({**schema, "required": sorted({*schema.get("required", []), "a"})}))
        edits.append(st.just({**schema, "additionalProperties": False}))
    if "items" in schema:
        edits.append(mutated(schema["items"]).map(lambda s: {**schema, "items": s}))
    return st.one_of(edits)


values = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*NAMES, "d"]), inner, max_size=4)
    ),
    max_leaves=8,
)


def instances(schema: Any) -> st.SearchStrategy[Any]:
    """Values shaped after `schema` (often valid under it), mixed with arbitrary ones."""
    if not isinstance(schema, dict):
        return values
    if "const" in schema:
        return st.just(schema["const"]) | values
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | values
    if schema.get("type") == "object":
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        shaped = st.fixed_dictionaries(
            {name: instances(properties.get(name, True)) for name in required},
            optional={
                **{
                    name: instances(sub) for name, sub in properties.items() if name not in required
                },
                "d": values,
            },
        )
        return shaped | values
    if schema.get("type") == "array":
        return st.lists(instances(schema.get("items", True)), max_size=3) | values
    return st.integers(-4, 9) | SCALARS | values


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Any, Any, list[Any]]:
    old = draw(schemas())
    new = draw(mutated(old) | schemas())
    samples = draw(st.lists(instances(old) | instances(new), min_size=1, max_size=12))
    return old, new, samples


def valid(schema: Any, value: Any) -> bool:
    checker = Draft202012Validator.FORMAT_CHECKER
    return Draft202012Validator(schema, format_checker=checker).is_valid(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=pairs())
def test_the_checker_never_calls_a_pair_compatible_when_old_data_breaks_the_new_schema(
    pair: tuple[Any, Any, list[Any]],
) -> None:
    old, new, samples = pair
    backward_ok = problems(old, new, "backward") == []
    forward_ok = problems(old, new, "forward") == []
    for value in samples:
        if backward_ok and valid(old, value):
            assert valid(new, value), (old, new, value)
        if forward_ok and valid(new, value):
            assert valid(old, value), (old, new, value)
    if backward_ok and forward_ok:
        assert problems(old, new, "full") == []
