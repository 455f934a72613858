"""The subset checker's state, its wording of reasons, and its rules keyword family by
keyword family (numbers, sizes, strings, arrays, objects, and every other keyword as opaque).
`Subset` (subset.py) adds the walk itself: `check`, references, finite value sets and types."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from bigmind.json_path import json_path_member
from signals_app.compatibility.json_values import (
    GROUPS,
    HANDLED,
    MISSING,
    WHOLE_SCHEMA,
    asserts_nothing,
    bound_holds,
    exact_int,
    json_equal,
    number,
    pattern_matches,
    references,
    resolve,
    show,
)
from signals_app.compatibility.problem import CompatibilityProblem


class SubsetRules:
    """Proves `narrow` ⊆ `wide` keyword by keyword; see `subset.Subset`."""

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
        if not json_equal(narrow_value, wide_value):
            return False
        pending, dynamic = references(narrow_value)
        if dynamic:
            return False
        seen: set[str] = set()
        while pending:
            ref = pending.pop()
            if ref in seen:
                continue
            seen.add(ref)
            narrow_target = resolve(self.narrow_root, ref)
            wide_target = resolve(self.wide_root, ref)
            if narrow_target is MISSING or wide_target is MISSING:
                return False
            if not json_equal(narrow_target, wide_target):
                return False
            more, dynamic = references(narrow_target)
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
        raise NotImplementedError  # Subset's: the walk

    def _child(self, narrow: Any, wide: Any, path: str) -> list[CompatibilityProblem]:
        """`check` for a value inside the instance (a property, an item)."""
        self._depth += 1
        try:
            return self.check(narrow, wide, path)
        finally:
            self._depth -= 1

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
            bound = number(wide.get(keyword))
            if bound is None:
                continue
            inclusive_key = "minimum" if is_lower else "maximum"
            inclusive = number(narrow.get(inclusive_key))
            exclusive = number(narrow.get("exclusive" + inclusive_key.capitalize()))
            if bound_holds(keyword, bound, inclusive, exclusive, is_lower=is_lower):
                continue
            problems.append(self._bound_problem(path, keyword, partner, narrow, bound))
        problems += self._multiple_of_problems(narrow, wide, path, integers_only=integers_only)
        return problems

    def _bound_problem(
        self, path: str, keyword: str, partner: str, narrow: dict[str, Any], bound: Any
    ) -> CompatibilityProblem:
        same = number(narrow.get(keyword))
        if same is not None:
            old, new = self._old_new(same, bound)
            verb = "raised" if new > old else "lowered"
            return CompatibilityProblem(path, f"{verb} from {show(old)} to {show(new)}", keyword)
        other = number(narrow.get(partner))
        if other is not None:
            old, new = self._old_new(f"{partner} {show(other)}", f"{keyword} {show(bound)}")
            return CompatibilityProblem(path, f"changed from {old} to {new}", keyword)
        return self._added_or_removed(path, f"{keyword} {show(bound)}", keyword)

    def _multiple_of_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str, *, integers_only: bool
    ) -> list[CompatibilityProblem]:
        divisor = wide.get("multipleOf")
        if number(divisor) is None:
            return []
        mine = narrow.get("multipleOf")
        if json_equal(mine, divisor):
            return []
        # Only integer divisors are compared: the validator divides floats inexactly
        # (0.3 is not a multipleOf 0.1 to it), so no rule about them would be safe.
        exact_divisor = exact_int(divisor)
        exact_mine = exact_int(mine)
        if exact_divisor is not None:
            if integers_only and exact_divisor == 1:
                return []
            if exact_mine is not None and exact_mine % exact_divisor == 0:
                return []
        if number(mine) is not None:
            old, new = self._old_new(mine, divisor)
            message = f"changed from {show(old)} to {show(new)}"
            return [CompatibilityProblem(path, message, "multipleOf")]
        return [self._added_or_removed(path, f"multipleOf {show(divisor)}", "multipleOf")]

    # --- sizes (minLength, maxItems...)
    def _size_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str, low: str, high: str
    ) -> list[CompatibilityProblem]:
        problems = []
        for keyword, is_lower in ((low, True), (high, False)):
            bound = number(wide.get(keyword))
            if bound is None:
                continue
            declared = number(narrow.get(keyword))
            mine = 0 if declared is None and is_lower else declared
            if mine is not None and (mine >= bound if is_lower else mine <= bound):
                continue
            if declared is not None:
                old, new = self._old_new(declared, bound)
                verb = "raised" if new > old else "lowered"
                problems.append(CompatibilityProblem(path, f"{verb} from {old} to {new}", keyword))
            else:
                problems.append(self._added_or_removed(path, f"{keyword} {show(bound)}", keyword))
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
        if keyword not in wide or json_equal(narrow.get(keyword), wide[keyword]):
            return []
        if keyword in narrow:
            old, new = self._old_new(narrow[keyword], wide[keyword])
            message = f"changed from {show(old)} to {show(new)}"
            return [CompatibilityProblem(path, message, keyword)]
        return [self._added_or_removed(path, f"{keyword} {show(wide[keyword])}", keyword)]

    # --- arrays
    def _array_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        problems = self._size_problems(narrow, wide, path, "minItems", "maxItems")
        if wide.get("uniqueItems") is True and narrow.get("uniqueItems") is not True:
            max_items = number(narrow.get("maxItems"))
            if max_items is None or max_items > 1:
                problems.append(self._added_or_removed(path, "uniqueItems", "uniqueItems"))
        narrow_prefix = narrow.get("prefixItems") or []
        wide_prefix = wide.get("prefixItems") or []
        narrow_rest = narrow.get("items", True)
        wide_rest = wide.get("items", True)
        max_items = number(narrow.get("maxItems"))
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
            if name not in narrow_properties and asserts_nothing(mine):
                if asserts_nothing(wide_schema):
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
        if asserts_nothing(wide_additional):
            return []
        wide_properties = wide.get("properties") or {}
        wide_patterns = wide.get("patternProperties") or {}
        problems = []
        # Properties only the narrow side names fall under the wide additionalProperties.
        for name, schema in (narrow.get("properties") or {}).items():
            if name in wide_properties or schema is False:
                continue
            if any(pattern_matches(pattern, name) for pattern in wide_patterns):
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
            if keyword in HANDLED or keyword not in Draft202012Validator.VALIDATORS:
                continue
            if keyword in WHOLE_SCHEMA:
                # The whole schema object differs (else check() had returned already).
                problems.append(self._cannot_prove(keyword, path))
                continue
            group = GROUPS.get(keyword, (keyword,))
            mine = [narrow.get(k, MISSING) for k in group]
            theirs = [wide.get(k, MISSING) for k in group]
            if not self._same(mine, theirs):
                problems.append(self._cannot_prove(keyword, path))
        return problems
