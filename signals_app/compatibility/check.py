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
another's (`Subset` in subset.py). It never says "compatible" when it is not; it may refuse a
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

from typing import Any

from bigmind.json_path import ROOT
from signals_app.compatibility.json_values import json_equal
from signals_app.compatibility.problem import CompatibilityProblem
from signals_app.compatibility.subset import Subset

MODES = ("none", "backward", "forward", "full")
# Enough to fix a schema; a huge enum cut down to one line saying how many more there were.
MAX_PROBLEMS = 50


def schema_compatibility_check(
    *, old: Any, new: Any, mode: str, old_version: int | None = None
) -> list[CompatibilityProblem]:
    """Why `new` breaks `mode` against `old` (an empty list when it does not)."""
    if mode not in MODES:
        raise ValueError(f"compatibility mode must be one of {', '.join(MODES)}: {mode!r}")
    if mode == "none" or json_equal(old, new):
        return []
    label = f"version {old_version}" if old_version is not None else "the previous version"
    problems: list[CompatibilityProblem] = []
    try:
        if mode in ("backward", "full"):
            problems += Subset(old, new, narrow_is_old=True, old_label=label).check(old, new, ROOT)
        if mode in ("forward", "full"):
            problems += Subset(new, old, narrow_is_old=False, old_label=label).check(new, old, ROOT)
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
