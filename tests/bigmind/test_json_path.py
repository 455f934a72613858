"""One notation for a place in JSON wherever the project shows one (issue #12): the `$.a[0]` of
schema violations (jsonschema's `json_path`), also for an invalid schema and for
schema-compatibility reasons."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError
from jsonschema import Draft202012Validator

from bigmind.json_path import detail_line, json_path
from signals_app.compatibility import SchemaIncompatible, schema_compatibility_check
from signals_app.management.commands._base import run_service
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


def test_a_detail_reads_the_same_in_the_admin_the_commands_and_the_reasons() -> None:
    old = {"type": "object", "properties": {"tier": {"enum": ["gold", "silver"]}}}
    new = {"type": "object", "properties": {"tier": {"enum": ["silver"]}}}
    (problem,) = schema_compatibility_check(old=old, new=new, mode="backward")
    assert str(problem) == detail_line(problem.as_detail())
    assert str(problem) == "$.tier (enum): value 'gold' no longer allowed"
    assert detail_line({"path": "$", "message": "m", "keyword": ""}) == "$: m"
    assert detail_line({"message": "m"}) == "m"


def test_a_command_prints_the_keyword_of_a_reason() -> None:
    def refuse() -> None:
        raise SchemaIncompatible(
            "not compatible",
            details=[
                {"path": "$.tier", "message": "value 'gold' no longer allowed", "keyword": "enum"}
            ],
        )

    with pytest.raises(CommandError, match=r"\$\.tier \(enum\): value 'gold' no longer allowed"):
        run_service(refuse)
