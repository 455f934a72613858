"""JSON values as the compatibility checker compares and shows them, local `$ref` resolution,
and the keyword sets it reasons about."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator

ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
NUMERIC = frozenset({"number", "integer"})
# Keywords the checker reasons about itself; any other keyword the validator asserts is opaque.
HANDLED = frozenset(
    {
        "type",
        "const",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "required",
        "properties",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "$ref",
    }
)
# Keywords whose meaning depends on their companions: compared as one.
GROUPS = {"if": ("if", "then", "else"), "contains": ("contains", "minContains", "maxContains")}
# Their result depends on annotations of every sibling keyword.
WHOLE_SCHEMA = frozenset({"unevaluatedProperties", "unevaluatedItems"})
# Keywords that constrain instances: the validator's own list, plus the companions it reads.
ASSERTING = (
    frozenset(Draft202012Validator.VALIDATORS) | {"then", "else", "minContains"} | {"maxContains"}
)
# Python floats are exact integers up to here; larger divisors would be rounded.
EXACT_INT = 2**53


def canon(value: Any) -> Any:
    """A hashable form under which JSON values compare as JSON does (true is not 1).

    Integers and floats stay apart: the validator treats `multipleOf: 2` and `2.0` differently."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z",)
    if isinstance(value, list):
        return ("l", tuple(canon(item) for item in value))
    if isinstance(value, dict):
        return ("d", tuple(sorted((key, canon(item)) for key, item in value.items())))
    return ("?", repr(value))


def json_equal(a: Any, b: Any) -> bool:
    return canon(a) == canon(b)


def show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def show_types(value: Any) -> str:
    if value is None:
        return "any type"
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def exact_int(value: Any) -> int | None:
    """A positive integer that floats represent exactly, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= EXACT_INT:
        return None
    return value


def declared_types(schema: dict[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    if isinstance(declared, str):
        return {declared}
    return {item for item in declared if isinstance(item, str)}


def asserts_nothing(schema: Any) -> bool:
    return schema is True or (isinstance(schema, dict) and not (set(schema) & ASSERTING))


MISSING = object()


def resolve(root: Any, ref: str) -> Any:
    """The target of a local JSON Pointer reference, or MISSING."""
    if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
        return MISSING  # an anchor ("#name"): not followed, so never proven
    node = root
    for raw in ref[2:].split("/") if len(ref) > 1 else []:
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return MISSING
    return node


def references(node: Any) -> tuple[list[str], bool]:
    """The `$ref` values inside `node`, and whether it holds a `$dynamicRef`."""
    refs: list[str] = []
    dynamic = False
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "$ref" and isinstance(value, str):
                    refs.append(value)
                elif key == "$dynamicRef":
                    dynamic = True
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return refs, dynamic


def asserting_keys(schema: dict[str, Any]) -> set[str]:
    return set(schema) & ASSERTING


def pattern_matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True  # unknown: assume it matches (the pattern keyword is then compared)


def bound_holds(
    keyword: str,
    bound: int | float,
    inclusive: int | float | None,
    exclusive: int | float | None,
    *,
    is_lower: bool,
) -> bool:
    """Whether the narrow side's bounds on one side imply the wide `keyword: bound`."""
    strict = keyword.startswith("exclusive")
    if is_lower:
        if exclusive is not None and exclusive >= bound:
            return True
        return inclusive is not None and (inclusive > bound if strict else inclusive >= bound)
    if exclusive is not None and exclusive <= bound:
        return True
    return inclusive is not None and (inclusive < bound if strict else inclusive <= bound)
