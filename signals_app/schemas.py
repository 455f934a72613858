"""JSON Schema checks: what a schema version must be before it is saved, and the compiled
validators the ingest path uses (one per schema version per process; versions are immutable,
so a compiled validator never goes stale)."""

from __future__ import annotations

import difflib
import json
from typing import Any

from django.conf import settings
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from bigmind.errors import BadRequest
from bigmind.json_path import json_path
from bigmind.strict_json import InvalidJson, json_body_parse

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
        # A place in the schema document, written like every other JSON location we show.
        raise SchemaInvalid(
            f"Not a valid JSON Schema (draft 2020-12) at {json_path(exc.path)}: {exc.message}"
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


# --- For the admin: a version's diff, a sample payload tried against a version -------------
def _schema_lines(schema: Any) -> list[str]:
    text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False)
    return [line + "\n" for line in text.splitlines()]


def schema_diff(
    *, old: dict[str, Any] | None, new: dict[str, Any], old_label: str = "", new_label: str = ""
) -> str:
    """A unified diff from `old` to `new`, both as pretty JSON with sorted keys (so moving a
    key is no change). The caller labels the sides ("version 2", "version 3"); `old` None is
    the first version, shown as all added. An empty string when they are the same."""
    before = _schema_lines(old) if old is not None else []
    return "".join(
        difflib.unified_diff(
            before,
            _schema_lines(new),
            fromfile=old_label or ("(none)" if old is None else "old"),
            tofile=new_label or "new",
        )
    )


def payload_try(*, schema: dict[str, Any], payload_text: str) -> tuple[bool, list[dict[str, str]]]:
    """Check sample `data` (JSON text) against a schema exactly as POST /v1/events would:
    the same strict JSON parsing, `data` must be an object, then the same violations with the
    same paths and messages. Returns (valid, violations); text that is not acceptable JSON is
    one violation at `$`."""
    size = len(payload_text.encode("utf-8", "surrogatepass"))
    limit = settings.BIGMIND_EVENT_MAX_BODY_BYTES
    if size > limit:
        return False, [_sample_problem(f"The sample is {size} bytes; at most {limit} are accepted")]
    try:
        data = json_body_parse(payload_text.encode("utf-8", "surrogatepass"))
    except InvalidJson as exc:
        # The ingest messages speak of the request body; here the text is the data alone.
        return False, [_sample_problem(exc.message.replace("Request body", "The sample", 1))]
    if not isinstance(data, dict):
        return False, [_sample_problem("data must be a JSON object")]  # as ingest says it
    try:
        violations = schema_violations(schema_compile(schema), data)
    except SchemaUnusable as exc:
        return False, list(exc.details or [])
    return not violations, violations


def _sample_problem(message: str) -> dict[str, str]:
    return {"path": "$", "message": message, "keyword": ""}
