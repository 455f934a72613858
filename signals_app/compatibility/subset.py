"""`Subset`: the walk of the subset checker (`check`), following `$ref`, finite value sets
(`const`, `enum`, null and boolean) checked value by value with the real validator, and `type`.
The keyword rules it applies are `SubsetRules`' (rules.py)."""

from __future__ import annotations

from typing import Any

from signals_app.compatibility.json_values import (
    ALL_TYPES,
    MISSING,
    NUMERIC,
    asserting_keys,
    asserts_nothing,
    declared_types,
    resolve,
    show,
    show_types,
)
from signals_app.compatibility.problem import CompatibilityProblem
from signals_app.compatibility.rules import SubsetRules


class Subset(SubsetRules):
    def check(self, narrow: Any, wide: Any, path: str) -> list[CompatibilityProblem]:
        """Reasons why an instance valid under `narrow` might not be valid under `wide`.

        An empty list is a proof that every instance valid under `narrow` is valid under `wide`.
        `narrow_is_old` says which side is the old version, so that each reason can describe
        the change from old to new ("lowered from 100 to 50", "added", "removed").
        """
        if narrow is False or asserts_nothing(wide):
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
        if live & NUMERIC:
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
        if asserting_keys(narrow) == {"$ref"} and isinstance(narrow["$ref"], str):
            narrow_target = resolve(self.narrow_root, narrow["$ref"])
        if asserting_keys(wide) == {"$ref"} and isinstance(wide["$ref"], str):
            wide_target = resolve(self.wide_root, wide["$ref"])
        if narrow_target is narrow and wide_target is wide:
            return None
        if narrow_target is MISSING or wide_target is MISSING:
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
        narrow_target = resolve(self.narrow_root, narrow_ref)
        wide_target = resolve(self.wide_root, wide_ref)
        if narrow_target is MISSING or wide_target is MISSING:
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
            types = declared_types(narrow)
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
                message = f"value {show(value)} no longer allowed"
            else:
                message = f"value {show(value)} now allowed, but {self.old_label} refuses it"
            problems.append(CompatibilityProblem(path, message, keyword))
        return problems

    def _const_enum_problems(self, wide: dict[str, Any], path: str) -> list[CompatibilityProblem]:
        # The narrow side is not a finite set here, so a finite wide side cannot hold it all.
        problems = []
        if "const" in wide:
            problems.append(self._added_or_removed(path, f"const {show(wide['const'])}", "const"))
        if "enum" in wide:
            shown = ", ".join(show(value) for value in wide["enum"][:10])
            more = ", ..." if len(wide["enum"]) > 10 else ""
            problems.append(self._added_or_removed(path, f"enum [{shown}{more}]", "enum"))
        return problems

    # --- type
    def _type_problems(
        self, narrow: dict[str, Any], wide: dict[str, Any], path: str
    ) -> list[CompatibilityProblem]:
        wide_types = declared_types(wide)
        if wide_types is None:
            return []
        narrow_types = declared_types(narrow)
        fits = narrow_types is not None and all(
            kind in wide_types or (kind == "integer" and "number" in wide_types)
            for kind in narrow_types
        )
        if fits:
            return []
        old, new = self._old_new(narrow.get("type"), wide.get("type"))
        return [
            CompatibilityProblem(path, f"type changed from {show_types(old)} to {show_types(new)}")
        ]

    def _live_types(self, narrow: dict[str, Any], wide: dict[str, Any]) -> set[str]:
        """The types of narrow instances that can reach the wide side's type-specific keywords
        (the others are refused by the wide `type` already, and reported as such)."""
        narrow_types = declared_types(narrow) or set(ALL_TYPES)
        wide_types = declared_types(wide) or set(ALL_TYPES)
        live = set()
        for kind in narrow_types:
            if kind in wide_types:
                live.add(kind)
            elif kind in NUMERIC and wide_types & NUMERIC:
                live.add("integer")  # number → integer: the integral numbers get through
        return live
