"""Compatibility of a new schema version with the one before it, after Confluent Schema Registry.

A signal's compatibility mode says what a new version may change:

- ``none``: anything.
- ``backward``: consumers using the *new* schema can read data produced with the *old* one, so
  every instance valid under the old schema must be valid under the new one (old ⊆ new).
  Adding an optional property, dropping a ``required`` entry, raising a ``maximum`` or adding an
  ``enum`` value are backward compatible; adding a required property is not.
- ``forward``: data produced with the *new* schema can be read by consumers of the *old* one
  (new ⊆ old). Adding a required property or lowering a ``maximum`` is forward compatible;
  removing a required property is not.
- ``full``: both, so old and new accept exactly the same data as far as this checker can tell.

Like Confluent's default modes (not the ``*_TRANSITIVE`` ones), a new version is checked against
the latest version only: a chain 1 → 2 → 3 of compatible steps is accepted even where 3 is not
compatible with 1 directly.

The check is a conservative, structural proof that one schema's instances are a subset of
another's (`_subset_problems`). It never says "compatible" when it is not; it may refuse a
change that is in fact compatible (then the signal's mode can be set to ``none`` to add it).
Each reason names the place in the *data* it is about, in the API's JSON path notation
(`bigmind.json_path`: `$` is `data`, `$.plan` a property, `$.tags[*]` every item of an array,
`$.tags[0]` the first, `$.*` every property the schema does not name), and the schema keyword
when the reason is about one (a `$ref` is followed without changing the place), for example::

    $.plan: type changed from string to integer
    $: new required property 'plan' (data written with version 2 may not have it)
    $.tier (enum): value 'gold' no longer allowed
    $: additionalProperties false now refuses properties the old schema allowed
    $.count (maximum): lowered from 100 to 50

What the checker reasons about (``narrow`` must be a subset of ``wide``):

- boolean schemas (``true`` accepts all, ``false`` nothing) and schemas that assert nothing;
- ``type`` (a name or a list; ``integer`` is part of ``number``), ``const`` and ``enum`` (when
  the narrow side is a finite set of values, each value is checked against the wide side with
  the real validator, so that case is exact);
- numbers: ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``, ``multipleOf``
  (integer divisors only, as floats divide inexactly);
- strings: ``minLength``/``maxLength``; ``pattern`` and ``format`` must be unchanged (a new or
  changed regular expression or format may refuse values the other side accepts);
- arrays: ``items``/``prefixItems`` position by position, ``minItems``/``maxItems``,
  ``uniqueItems``;
- objects: ``properties`` recursively, ``required``, ``additionalProperties`` (the closed
  content model: with ``false`` on the wide side, a property only the narrow side allows is a
  problem; with an open one, a new constrained property is a problem, since the old data may
  already hold anything under that name), ``minProperties``/``maxProperties``,
  ``dependentRequired``;
- ``$ref`` to a JSON Pointer inside the schema, followed on both sides.

Every other assertion (``allOf``, ``anyOf``, ``oneOf``, ``not``, ``if``/``then``/``else``,
``dependentSchemas``, ``patternProperties``, ``propertyNames``, ``contains``, ``$dynamicRef``...)
is accepted only where the wide side's value means the same as the narrow side's (deep-equal,
with equal targets for any reference inside); otherwise the reason is "cannot prove
compatibility of <keyword> at <path>". A keyword only the narrow side has can only make the
narrow side smaller, so it is ignored. ``unevaluatedProperties``/``unevaluatedItems`` depend on
every sibling keyword, so they are accepted only where the whole schema object is unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator

from bigmind.errors import BadRequest
from bigmind.json_path import ROOT, detail_line, json_path_member

MODES = ("none", "backward", "forward", "full")
# Enough to fix a schema; a huge enum cut down to one line saying how many more there were.
MAX_PROBLEMS = 50

_ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
_NUMERIC = frozenset({"number", "integer"})
# Keywords the checker reasons about itself; any other keyword the validator asserts is opaque.
_HANDLED = frozenset(
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
_GROUPS = {"if": ("if", "then", "else"), "contains": ("contains", "minContains", "maxContains")}
# Their result depends on annotations of every sibling keyword.
_WHOLE_SCHEMA = frozenset({"unevaluatedProperties", "unevaluatedItems"})
# Keywords that constrain instances: the validator's own list, plus the companions it reads.
_ASSERTING = (
    frozenset(Draft202012Validator.VALIDATORS) | {"then", "else", "minContains"} | {"maxContains"}
)
# Python floats are exact integers up to here; larger divisors would be rounded.
_EXACT_INT = 2**53


class SchemaIncompatible(BadRequest):
    code = "schema_incompatible"


@dataclass(frozen=True)
class CompatibilityProblem:
    path: str  # where in the data, in the API's JSON path notation (bigmind.json_path)
    message: str
    keyword: str = ""  # the schema keyword the reason is about, when it is about one

    def __str__(self) -> str:
        return detail_line(self.as_detail())

    def as_detail(self) -> dict[str, str]:
        # The keys of a schema violation's details, so that clients read both alike.
        return {"path": self.path, "message": self.message, "keyword": self.keyword}


def schema_compatibility_check(
    *, old: Any, new: Any, mode: str, old_version: int | None = None
) -> list[CompatibilityProblem]:
    """Why `new` breaks `mode` against `old` (an empty list when it does not)."""
    if mode not in MODES:
        raise ValueError(f"compatibility mode must be one of {', '.join(MODES)}: {mode!r}")
    if mode == "none" or _json_equal(old, new):
        return []
    label = f"version {old_version}" if old_version is not None else "the previous version"
    problems: list[CompatibilityProblem] = []
    try:
        if mode in ("backward", "full"):
            problems += _Subset(old, new, narrow_is_old=True, old_label=label).check(old, new, ROOT)
        if mode in ("forward", "full"):
            problems += _Subset(new, old, narrow_is_old=False, old_label=label).check(
                new, old, ROOT
            )
    except RecursionError:
        return [
            CompatibilityProblem(
                ROOT,
                "cannot prove compatibility: the schemas are nested too deeply to compare; "
                "use compatibility none to add this version",
            )
        ]
    unique = list(dict.fromkeys(problems))  # `full` may find one change from both sides
    if len(unique) > MAX_PROBLEMS:
        rest = len(unique) - MAX_PROBLEMS + 1
        unique = [*unique[: MAX_PROBLEMS - 1], CompatibilityProblem(ROOT, f"... {rest} more")]
    return unique


def schema_compatibility_problems(
    *, old: Any, new: Any, mode: str, old_version: int | None = None
) -> list[str]:
    """The reasons `new` breaks `mode` against `old`, one readable line each."""
    return [
        str(problem)
        for problem in schema_compatibility_check(
            old=old, new=new, mode=mode, old_version=old_version
        )
    ]


def _subset_problems(
    narrow: Any,
    wide: Any,
    path: str = ROOT,
    *,
    narrow_is_old: bool = True,
    old_label: str = "the previous version",
) -> list[str]:
    """Reasons why an instance valid under `narrow` might not be valid under `wide`.

    An empty list is a proof that every instance valid under `narrow` is valid under `wide`.
    `narrow_is_old` says which side is the old version, so that each reason can describe the
    change from old to new ("lowered from 100 to 50", "added", "removed").

    >>> _subset_problems({"type": "integer"}, {"type": "number"})
    []
    >>> _subset_problems({"enum": ["a", "gold"]}, {"enum": ["a"]})
    ["$ (enum): value 'gold' no longer allowed"]
    """
    checker = _Subset(narrow, wide, narrow_is_old=narrow_is_old, old_label=old_label)
    return [str(problem) for problem in checker.check(narrow, wide, path)]


# --- JSON helpers ------------------------------------------------------------------------------
def _canon(value: Any) -> Any:
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
        return ("l", tuple(_canon(item) for item in value))
    if isinstance(value, dict):
        return ("d", tuple(sorted((key, _canon(item)) for key, item in value.items())))
    return ("?", repr(value))


def _json_equal(a: Any, b: Any) -> bool:
    return _canon(a) == _canon(b)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _show_types(value: Any) -> str:
    if value is None:
        return "any type"
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _exact_int(value: Any) -> int | None:
    """A positive integer that floats represent exactly, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _EXACT_INT:
        return None
    return value


def _types(schema: dict[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    if isinstance(declared, str):
        return {declared}
    return {item for item in declared if isinstance(item, str)}


def _asserts_nothing(schema: Any) -> bool:
    return schema is True or (isinstance(schema, dict) and not (set(schema) & _ASSERTING))


_MISSING = object()


def _resolve(root: Any, ref: str) -> Any:
    """The target of a local JSON Pointer reference, or _MISSING."""
    if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
        return _MISSING  # an anchor ("#name"): not followed, so never proven
    node = root
    for raw in ref[2:].split("/") if len(ref) > 1 else []:
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node


def _references(node: Any) -> tuple[list[str], bool]:
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


# --- The subset checker ------------------------------------------------------------------------
class _Subset:
    """Proves `narrow` ⊆ `wide` keyword by keyword; see `_subset_problems`."""

    def __init__(self, narrow_root: Any, wide_root: Any, *, narrow_is_old: bool, old_label: str):
        self.narrow_root = narrow_root
        self.wide_root = wide_root
        self.narrow_is_old = narrow_is_old
        self.old_label = old_label
        checker = Draft202012Validator.FORMAT_CHECKER
        self._narrow_validator = Draft202012Validator(narrow_root, format_checker=checker)
        self._wide_validator = Draft202012Validator(wide_root, format_checker=checker)
        # Pairs of subschemas being compared through a reference, with the instance depth at
        # which each was entered. Meeting a pair again deeper in the instance (a recursive
        # schema: a tree, a linked list) may assume it: instances are finite, so the proof is
        # an induction on their depth. Meeting it again at the same depth is a reference
        # loop that never reaches a child; that is not proven.
        self._following: dict[tuple[int, int], int] = {}
        self._depth = 0

    # Reasons worded from old to new, whichever side is narrow.
    def _old_new(self, narrow_value: Any, wide_value: Any) -> tuple[Any, Any]:
        if self.narrow_is_old:
            return narrow_value, wide_value
        return wide_value, narrow_value

    def _added_or_removed(self, path: str, what: str, keyword: str) -> CompatibilityProblem:
        # The wide side has a constraint the narrow side lacks: new if narrow is old.
        verb = "added" if self.narrow_is_old else "removed"
        return CompatibilityProblem(path, f"{what} {verb}", keyword)

    def _cannot_prove(self, keyword: str, path: str) -> CompatibilityProblem:
        return CompatibilityProblem(
            path,
            f"cannot prove compatibility of {keyword}; use compatibility none to add this version",
        )

    def _same(self, narrow_value: Any, wide_value: Any) -> bool:
        """Deep-equal, and every reference inside reaches equal targets in both schemas."""
        if not _json_equal(narrow_value, wide_value):
            return False
        pending, dynamic = _references(narrow_value)
        if dynamic:
            return False
        seen: set[str] = set()
        while pending:
            ref = pending.pop()
            if ref in seen:
                continue
            seen.add(ref)
            narrow_target = _resolve(self.narrow_root, ref)
            wide_target = _resolve(self.wide_root, ref)
            if narrow_target is _MISSING or wide_target is _MISSING:
                return False
            if not _json_equal(narrow_target, wide_target):
                return False
            more, dynamic = _references(narrow_target)
            if dynamic:
                return False
            pending.extend(more)
        return True

    def _valid(self, validator: Draft202012Validator, schema: Any, value: Any) -> bool | None:
        try:
            # evolve keeps the root's resolver, so references inside `schema` still resolve.
            return bool(validator.evolve(schema=schema).is_valid(value))
        except Exception:  # a pathological schema: unknown, so treated as a refusal
            return None

    def check(self, narrow: Any, wide: Any, path: str) -> list[CompatibilityProblem]:
        if narrow is False or _asserts_nothing(wide):
            return []
        if wide is False:
            if self.narrow_is_old:
                return [CompatibilityProblem(path, "the new version refuses every value here")]
            return [
                CompatibilityProblem(
                    path, f"{self.old_label} refuses every value the new one allows here"
                )
            ]
        if narrow is True:
            narrow = {}
        if not isinstance(narrow, dict) or not isinstance(wide, dict):
            return [self._cannot_prove("a non-schema value", path)]
        if self._same(narrow, wide):
            return []
        followed = self._follow_pure_refs(narrow, wide, path)
        if followed is not None:
            return followed

        values = self._finite_values(narrow)
        if values is not None:
            return self._values_problems(narrow, wide, values, path)

        problems = self._type_problems(narrow, wide, path)
        problems += self._const_enum_problems(wide, path)
        live = self._live_types(narrow, wide)
        if live & _NUMERIC:
            problems += self._numeric_problems(
                narrow, wide, path, integers_only="number" not in live
            )
        if "string" in live:
            problems += self._string_problems(narrow, wide, path)
        if "array" in live:
            problems += self._array_problems(narrow, wide, path)
        if "object" in live:
            problems += self._object_problems(narrow, wide, path)
        problems += self._format_problems(narrow, wide, path)
        problems += self._ref_problems(narrow, wide, path)
        problems += self._opaque_problems(narrow, wide, path)
        return problems

    # --- references
    def _follow_pure_refs(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem] | None:
        """A schema that is only `{"$ref": ...}` means its target: compare the targets."""
        narrow_target, wide_target = narrow, wide
        if _asserting_keys(narrow) == {"$ref"} and isinstance(narrow["$ref"], str):
            narrow_target = _resolve(self.narrow_root, narrow["$ref"])
        if _asserting_keys(wide) == {"$ref"} and isinstance(wide["$ref"], str):
            wide_target = _resolve(self.wide_root, wide["$ref"])
        if narrow_target is narrow and wide_target is wide:
            return None
        if narrow_target is _MISSING or wide_target is _MISSING:
            return [self._cannot_prove("$ref", path)]
        return self._through_ref(narrow_target, wide_target, path)

    def _through_ref(self, narrow: Any, wide: Any, path: str) -> list[CompatibilityProblem]:
        key = (id(narrow), id(wide))
        if key in self._following:
            if self._following[key] < self._depth:
                return []
            return [self._cannot_prove("$ref", path)]
        self._following[key] = self._depth
        try:
            # A reference does not move in the data: reasons name the place that uses it.
            return self.check(narrow, wide, path)
        finally:
            del self._following[key]

    def _child(self, narrow: Any, wide: Any, path: str) -> list[CompatibilityProblem]:
        """`check` for a value inside the instance (a property, an item)."""
        self._depth += 1
        try:
            return self.check(narrow, wide, path)
        finally:
            self._depth -= 1

    def _ref_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        if "$ref" not in wide:
            return []
        wide_ref, narrow_ref = wide["$ref"], narrow.get("$ref")
        if narrow_ref is not None and self._same({"$ref": narrow_ref}, {"$ref": wide_ref}):
            return []
        if not isinstance(narrow_ref, str) or not isinstance(wide_ref, str):
            return [self._cannot_prove("$ref", path)]
        narrow_target = _resolve(self.narrow_root, narrow_ref)
        wide_target = _resolve(self.wide_root, wide_ref)
        if narrow_target is _MISSING or wide_target is _MISSING:
            return [self._cannot_prove("$ref", path)]
        # The narrow side is inside its target, so target ⊆ target proves this keyword.
        return self._through_ref(narrow_target, wide_target, path)

    # --- finite value sets
    def _finite_values(self, narrow: dict[str, Any]) -> list[Any] | None:
        if "const" in narrow:
            candidates = [narrow["const"]]
        elif isinstance(narrow.get("enum"), list):
            candidates = list(narrow["enum"])
        else:
            types = _types(narrow)
            if types is None or not types <= {"null", "boolean"}:
                return None
            candidates = ([None] if "null" in types else []) + (
                [False, True] if "boolean" in types else []
            )
        # Values the narrow side refuses anyway are no instances of it.
        return [
            value
            for value in candidates
            if self._valid(self._narrow_validator, narrow, value) is not False
        ]

    def _values_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], values: list[Any], path: str
    ) -> list[CompatibilityProblem]:
        keyword = "const" if "const" in narrow else "enum" if "enum" in narrow else ""
        problems = []
        for value in values:
            if self._valid(self._wide_validator, wide, value):
                continue
            if self.narrow_is_old:
                message = f"value {_show(value)} no longer allowed"
            else:
                message = f"value {_show(value)} now allowed, but {self.old_label} refuses it"
            problems.append(CompatibilityProblem(path, message, keyword))
        return problems

    def _const_enum_problems(self, wide: dict[str, Any], path: str) -> list[CompatibilityProblem]:
        # The narrow side is not a finite set here, so a finite wide side cannot hold it all.
        problems = []
        if "const" in wide:
            problems.append(self._added_or_removed(path, f"const {_show(wide['const'])}", "const"))
        if "enum" in wide:
            shown = ", ".join(_show(value) for value in wide["enum"][:10])
            more = ", ..." if len(wide["enum"]) > 10 else ""
            problems.append(self._added_or_removed(path, f"enum [{shown}{more}]", "enum"))
        return problems

    # --- type
    def _type_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        wide_types = _types(wide)
        if wide_types is None:
            return []
        narrow_types = _types(narrow)
        fits = narrow_types is not None and all(
            kind in wide_types or (kind == "integer" and "number" in wide_types)
            for kind in narrow_types
        )
        if fits:
            return []
        old, new = self._old_new(narrow.get("type"), wide.get("type"))
        return [
            CompatibilityProblem(
                path, f"type changed from {_show_types(old)} to {_show_types(new)}"
            )
        ]

    def _live_types(self, narrow: dict[str, Any], wide: dict[str, Any]) -> set[str]:
        """The types of narrow instances that can reach the wide side's type-specific keywords
        (the others are refused by the wide `type` already, and reported as such)."""
        narrow_types = _types(narrow) or set(_ALL_TYPES)
        wide_types = _types(wide) or set(_ALL_TYPES)
        live = set()
        for kind in narrow_types:
            if kind in wide_types:
                live.add(kind)
            elif kind in _NUMERIC and wide_types & _NUMERIC:
                live.add("integer")  # number → integer: the integral numbers get through
        return live

    # --- numbers
    def _numeric_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str, *, integers_only: bool
    ) -> list[CompatibilityProblem]:
        problems = []
        for keyword, partner, is_lower in (
            ("minimum", "exclusiveMinimum", True),
            ("exclusiveMinimum", "minimum", True),
            ("maximum", "exclusiveMaximum", False),
            ("exclusiveMaximum", "maximum", False),
        ):
            bound = _number(wide.get(keyword))
            if bound is None:
                continue
            inclusive_key = "minimum" if is_lower else "maximum"
            inclusive = _number(narrow.get(inclusive_key))
            exclusive = _number(narrow.get("exclusive" + inclusive_key.capitalize()))
            if _bound_holds(keyword, bound, inclusive, exclusive, is_lower=is_lower):
                continue
            problems.append(self._bound_problem(path, keyword, partner, narrow, bound))
        problems += self._multiple_of_problems(narrow, wide, path, integers_only=integers_only)
        return problems

    def _bound_problem(
        self, path: str, keyword: str, partner: str, narrow: dict[str, Any], bound: Any
    ) -> CompatibilityProblem:
        same = _number(narrow.get(keyword))
        if same is not None:
            old, new = self._old_new(same, bound)
            verb = "raised" if new > old else "lowered"
            return CompatibilityProblem(path, f"{verb} from {_show(old)} to {_show(new)}", keyword)
        other = _number(narrow.get(partner))
        if other is not None:
            old, new = self._old_new(f"{partner} {_show(other)}", f"{keyword} {_show(bound)}")
            return CompatibilityProblem(path, f"changed from {old} to {new}", keyword)
        return self._added_or_removed(path, f"{keyword} {_show(bound)}", keyword)

    def _multiple_of_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str, *, integers_only: bool
    ) -> list[CompatibilityProblem]:
        divisor = wide.get("multipleOf")
        if _number(divisor) is None:
            return []
        mine = narrow.get("multipleOf")
        if _json_equal(mine, divisor):
            return []
        # Only integer divisors are compared: the validator divides floats inexactly
        # (0.3 is not a multipleOf 0.1 to it), so no rule about them would be safe.
        exact_divisor = _exact_int(divisor)
        exact_mine = _exact_int(mine)
        if exact_divisor is not None:
            if integers_only and exact_divisor == 1:
                return []
            if exact_mine is not None and exact_mine % exact_divisor == 0:
                return []
        if _number(mine) is not None:
            old, new = self._old_new(mine, divisor)
            message = f"changed from {_show(old)} to {_show(new)}"
            return [CompatibilityProblem(path, message, "multipleOf")]
        return [self._added_or_removed(path, f"multipleOf {_show(divisor)}", "multipleOf")]

    # --- sizes (minLength, maxItems...)
    def _size_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str, low: str, high: str
    ) -> list[CompatibilityProblem]:
        problems = []
        for keyword, is_lower in ((low, True), (high, False)):
            bound = _number(wide.get(keyword))
            if bound is None:
                continue
            declared = _number(narrow.get(keyword))
            mine = 0 if declared is None and is_lower else declared
            if mine is not None and (mine >= bound if is_lower else mine <= bound):
                continue
            if declared is not None:
                old, new = self._old_new(declared, bound)
                verb = "raised" if new > old else "lowered"
                problems.append(CompatibilityProblem(path, f"{verb} from {old} to {new}", keyword))
            else:
                problems.append(self._added_or_removed(path, f"{keyword} {_show(bound)}", keyword))
        return problems

    # --- strings
    def _string_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        problems = self._size_problems(narrow, wide, path, "minLength", "maxLength")
        problems += self._unchanged_text(narrow, wide, path, "pattern")
        return problems

    def _format_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        # Formats are asserted (schema_compile); not type-gated, so a custom one stays safe.
        return self._unchanged_text(narrow, wide, path, "format")

    def _unchanged_text(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str, keyword: str
    ) -> list[CompatibilityProblem]:
        if keyword not in wide or _json_equal(narrow.get(keyword), wide[keyword]):
            return []
        if keyword in narrow:
            old, new = self._old_new(narrow[keyword], wide[keyword])
            message = f"changed from {_show(old)} to {_show(new)}"
            return [CompatibilityProblem(path, message, keyword)]
        return [self._added_or_removed(path, f"{keyword} {_show(wide[keyword])}", keyword)]

    # --- arrays
    def _array_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        problems = self._size_problems(narrow, wide, path, "minItems", "maxItems")
        if wide.get("uniqueItems") is True and narrow.get("uniqueItems") is not True:
            max_items = _number(narrow.get("maxItems"))
            if max_items is None or max_items > 1:
                problems.append(self._added_or_removed(path, "uniqueItems", "uniqueItems"))
        narrow_prefix = narrow.get("prefixItems") or []
        wide_prefix = wide.get("prefixItems") or []
        narrow_rest = narrow.get("items", True)
        wide_rest = wide.get("items", True)
        max_items = _number(narrow.get("maxItems"))
        for index in range(max(len(narrow_prefix), len(wide_prefix))):
            if max_items is not None and index >= max_items:
                return problems  # narrow arrays never reach this position
            mine = narrow_prefix[index] if index < len(narrow_prefix) else narrow_rest
            if mine is False:
                return problems
            if index < len(wide_prefix):
                problems += self._child(mine, wide_prefix[index], f"{path}[{index}]")
            else:
                problems += self._child(mine, wide_rest, f"{path}[{index}]")
        if max_items is None or max_items > max(len(narrow_prefix), len(wide_prefix)):
            problems += self._child(narrow_rest, wide_rest, f"{path}[*]")
        return list(dict.fromkeys(problems))

    # --- objects
    def _object_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        problems = self._required_problems(narrow, wide, path)
        problems += self._size_problems(narrow, wide, path, "minProperties", "maxProperties")
        problems += self._dependent_required_problems(narrow, wide, path)
        problems += self._properties_problems(narrow, wide, path)
        problems += self._additional_problems(narrow, wide, path)
        return problems

    def _required_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        guaranteed = set(narrow.get("required") or [])
        problems = []
        for name in wide.get("required") or []:
            if name in guaranteed:
                continue
            if self.narrow_is_old:
                message = (
                    f"new required property {name!r} (data written with {self.old_label} "
                    "may not have it)"
                )
            else:
                message = f"property {name!r} is no longer required ({self.old_label} requires it)"
            problems.append(CompatibilityProblem(path, message))
        return problems

    def _dependent_required_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        wide_deps = wide.get("dependentRequired") or {}
        narrow_deps = narrow.get("dependentRequired") or {}
        required = set(narrow.get("required") or [])
        problems = []
        for name, needed in wide_deps.items():
            if self._property_schema(narrow, name) is False:
                continue  # narrow objects never have it
            missing = [
                n for n in needed if n not in required and n not in narrow_deps.get(name, [])
            ]
            if not missing:
                continue
            shown = ", ".join(repr(n) for n in missing)
            if self.narrow_is_old:
                message = f"{shown} now required when {name!r} is present"
            else:
                message = (
                    f"{shown} no longer required when {name!r} is present "
                    f"({self.old_label} requires it)"
                )
            problems.append(CompatibilityProblem(path, message, "dependentRequired"))
        return problems

    def _property_schema(self, narrow: dict[str, Any], name: str) -> Any:
        """What the narrow side requires of a property `name` (an over-approximation)."""
        properties = narrow.get("properties") or {}
        if name in properties:
            return properties[name]
        for pattern in narrow.get("patternProperties") or {}:
            try:
                if re.search(pattern, name):
                    return True  # constrained by a pattern schema; "anything" is safe
            except re.error:
                return True
        return narrow.get("additionalProperties", True)

    def _properties_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        narrow_properties = narrow.get("properties") or {}
        problems = []
        for name, wide_schema in (wide.get("properties") or {}).items():
            where = json_path_member(path, name)
            mine = self._property_schema(narrow, name)
            if name not in narrow_properties and _asserts_nothing(mine):
                if _asserts_nothing(wide_schema):
                    continue
                if self.narrow_is_old:
                    message = (
                        f"new property {name!r} is constrained, but {self.old_label} allowed "
                        "any value under that name (its additionalProperties are open)"
                    )
                else:
                    message = (
                        f"property {name!r} removed, so the new version allows any value under "
                        f"that name, which {self.old_label} constrains"
                    )
                problems.append(CompatibilityProblem(where, message))
                continue
            problems += self._child(mine, wide_schema, where)
        return problems

    def _additional_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        wide_additional = wide.get("additionalProperties", True)
        if _asserts_nothing(wide_additional):
            return []
        wide_properties = wide.get("properties") or {}
        wide_patterns = wide.get("patternProperties") or {}
        problems = []
        # Properties only the narrow side names fall under the wide additionalProperties.
        for name, schema in (narrow.get("properties") or {}).items():
            if name in wide_properties or schema is False:
                continue
            if any(_pattern_matches(pattern, name) for pattern in wide_patterns):
                continue  # governed by patternProperties, which must be unchanged
            where = json_path_member(path, name)
            if wide_additional is False:
                if self.narrow_is_old:
                    message = (
                        f"property {name!r} removed while additionalProperties is false "
                        f"(data written with {self.old_label} may have it)"
                    )
                else:
                    message = (
                        f"new property {name!r}, but {self.old_label} has additionalProperties "
                        "false and refuses it"
                    )
                problems.append(CompatibilityProblem(where, message))
            else:
                problems += self._child(schema, wide_additional, where)
        # Every other name.
        narrow_additional = narrow.get("additionalProperties", True)
        if narrow.get("patternProperties") and not self._same(
            narrow.get("patternProperties"), wide.get("patternProperties")
        ):
            narrow_additional = True  # names matching a narrow pattern: over-approximated
        if narrow_additional is False:
            return problems
        if wide_additional is False:
            if self.narrow_is_old:
                message = "additionalProperties false now refuses properties the old schema allowed"
            else:
                message = (
                    f"additionalProperties false removed; {self.old_label} refuses properties "
                    "the new version allows"
                )
            problems.append(CompatibilityProblem(path, message))
        else:
            problems += self._child(narrow_additional, wide_additional, f"{path}.*")
        return problems

    # --- everything else
    def _opaque_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        problems = []
        for keyword in wide:
            if keyword in _HANDLED or keyword not in Draft202012Validator.VALIDATORS:
                continue
            if keyword in _WHOLE_SCHEMA:
                # The whole schema object differs (else check() had returned already).
                problems.append(self._cannot_prove(keyword, path))
                continue
            group = _GROUPS.get(keyword, (keyword,))
            mine = [narrow.get(k, _MISSING) for k in group]
            theirs = [wide.get(k, _MISSING) for k in group]
            if not self._same(mine, theirs):
                problems.append(self._cannot_prove(keyword, path))
        return problems


def _asserting_keys(schema: dict[str, Any]) -> set[str]:
    return set(schema) & _ASSERTING


def _pattern_matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True  # unknown: assume it matches (the pattern keyword is then compared)


def _bound_holds(
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
