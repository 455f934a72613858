"""JSON Schema checks: what a schema version must be before it is saved, and the compiled
validators the ingest path uses (one per schema version per process; versions are immutable,
so a compiled validator never goes stale)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from bigmind.errors import BadRequest

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Cap on the details list of one rejected event: enough to fix a payload, bounded in size.
MAX_VIOLATIONS = 50


class SchemaInvalid(BadRequest):
    code = "schema_invalid"


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _has_nested_id(schema: dict[str, Any]) -> bool:
    # A nested $id changes the base that references resolve against; with local references
    # only, it can only break them (and would be found out by an event, not here).
    stack: list[Any] = [value for key, value in schema.items() if key != "$id"]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "$id" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def schema_check(schema: Any) -> None:
    """Refuse anything that is not a usable draft 2020-12 schema, with a message naming why."""
    if not isinstance(schema, dict):
        raise SchemaInvalid("A schema must be a JSON object")
    declared = schema.get("$schema")
    if declared is not None and (
        not isinstance(declared, str) or declared.rstrip("#") != DRAFT_2020_12
    ):
        raise SchemaInvalid(
            f"Only JSON Schema draft 2020-12 is supported ($schema is {declared!r})"
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise SchemaInvalid(
            f"Not a valid JSON Schema (draft 2020-12) at ${path}: {exc.message}"
        ) from exc
    # Remote references would be fetched (or fail) at validation time, on the ingest path.
    if _has_nested_id(schema):
        raise SchemaInvalid("'$id' is only supported at the top of a schema")
    refs = _refs(schema)
    remote = [ref for ref in refs if not ref.startswith("#")]
    if remote:
        raise SchemaInvalid(f"Only local references ('#/...') are supported; found {remote[0]!r}")
    # A local reference to nothing would only fail when an event reaches it.
    resolver = Registry().with_resource("", DRAFT202012.create_resource(schema)).resolver()
    for ref in refs:
        try:
            resolver.lookup(ref)
        except Unresolvable as exc:
            raise SchemaInvalid(f"The reference {ref!r} points to nothing in the schema") from exc


def schema_compile(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a checked schema; formats (date-time, email...) are asserted, not just
    annotated, because that is what a client validating its payload expects."""
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


class SchemaUnusable(BadRequest):
    code = "schema_validation_failed"


def schema_violations(validator: Draft202012Validator, data: Any) -> list[dict[str, str]]:
    """Each violation with the JSON path of the offending value, in document order."""
    try:
        errors = sorted(
            validator.iter_errors(data), key=lambda e: (list(map(str, e.path)), e.message)
        )
    except (OverflowError, RecursionError, ValueError, Unresolvable) as exc:
        # The data drove the schema somewhere it cannot go: a number too large for a float
        # (`multipleOf`), a pathological `format: regex` value, a reference that resolves to
        # nothing from where it was reached. That is a refusal of this data, not a crash.
        raise SchemaUnusable(
            "data could not be checked against the schema",
            details=[{"path": "$", "message": f"{type(exc).__name__}: {exc}"[:300], "keyword": ""}],
        ) from exc
    return [
        {"path": error.json_path, "message": error.message, "keyword": str(error.validator)}
        for error in errors[:MAX_VIOLATIONS]
    ]
