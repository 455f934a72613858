"""One notation for a place in JSON wherever the project shows one (issue #12): the `$.a[0]` of
schema violations (jsonschema's `json_path`), also for an invalid schema and for
schema-compatibility reasons."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from bigmind.json_path import json_path
from signals_app.compatibility import schema_compatibility_check
from signals_app.schemas import SchemaInvalid, schema_check

NAMES = ["plan", "a1_b", "a b", "a/b~", "it's", "back\\slash", "1st", "é", "", "*"]


@pytest.mark.parametrize("name", NAMES)
def test_a_violation_path_and_ours_are_written_alike(name: str) -> None:
    schema = {"properties": {name: {"items": {"type": "integer"}}}}
    (error,) = Draft202012Validator(schema).iter_errors({name: ["x"]})
    assert json_path([name, 0]) == error.json_path


@pytest.mark.parametrize("name", NAMES)
def test_a_compatibility_reason_names_the_place_as_a_violation_would(name: str) -> None:
    old = {"type": "object", "properties": {name: {"type": "string"}}}
    new = {"type": "object", "properties": {name: {"type": "integer"}}}
    (problem,) = schema_compatibility_check(old=old, new=new, mode="backward")
    (error,) = Draft202012Validator(new).iter_errors({name: "x"})
    assert problem.path == error.json_path


def test_an_invalid_schema_is_located_in_the_same_notation() -> None:
    with pytest.raises(SchemaInvalid, match=r"at \$\.properties\['a b'\]\.type: "):
        schema_check({"properties": {"a b": {"type": "strange"}}})
