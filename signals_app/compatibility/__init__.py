"""Compatibility of a new schema version with the one before it (the modes none, backward,
forward and full, after Confluent Schema Registry). check.py says what each mode allows and
what the checker reasons about, and holds the entry points; the checker itself is `Subset`
(subset.py, the walk) on `SubsetRules` (rules.py, keyword by keyword), over json_values.py."""

from signals_app.compatibility.check import (
    MAX_PROBLEMS,
    MODES,
    schema_compatibility_check,
    schema_compatibility_problems,
)
from signals_app.compatibility.problem import CompatibilityProblem, SchemaIncompatible

__all__ = [
    "MAX_PROBLEMS",
    "MODES",
    "CompatibilityProblem",
    "SchemaIncompatible",
    "schema_compatibility_check",
    "schema_compatibility_problems",
]
