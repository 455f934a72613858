"""Set-based SQL for the pipeline: a whole chunk's values as one row source, on either database.

A chunk of events is worked on in a few statements, each taking every event's values at once.
On PostgreSQL they travel as one array per column and `unnest(...)` turns them back into rows:
the statement's text stays the same whatever the chunk's size, and PostgreSQL parses a few
array literals instead of thousands of placeholders. SQLite has no arrays: there the same
statement reads a `VALUES` list (3.35+ also has the RETURNING and upserts used with it).

Values go in as the database driver wants them: `uuid_value` and `datetime_value` adapt the
two types that differ (SQLite stores UUIDs as 32 hex digits and datetimes as naive UTC text);
JSON goes as text on both (cast to jsonb by `rows` on PostgreSQL). Rows read back from raw SQL
are turned into Python values by `uuid_read`, `datetime_read` and `json_read`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.db import connection


def postgres() -> bool:
    return connection.vendor == "postgresql"


def rows(columns: Sequence[tuple[str, str]], values: Sequence[Sequence[Any]]) -> tuple[str, list]:
    """`<row source> AS v` for a FROM clause, and its parameters.

    `columns` are (name, PostgreSQL type) pairs; `values` are rows of adapted values (never
    empty: a VALUES list needs a row). Column names must not clash with the columns of a table
    the statement also reads, since SQLite's UPDATE ... FROM cannot qualify them in RETURNING.
    """
    assert values, "a row source needs at least one row"
    names = ", ".join(f'"{name}"' for name, _ in columns)
    if postgres():
        arrays = ", ".join(f"%s::{pg_type}[]" for _, pg_type in columns)
        return f"unnest({arrays}) AS v({names})", [
            list(column) for column in zip(*values, strict=True)
        ]
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    aliases = ", ".join(f'column{i} AS "{name}"' for i, (name, _) in enumerate(columns, start=1))
    params = [value for values_row in values for value in values_row]
    listed = ", ".join([row] * len(values))
    return f"(SELECT {aliases} FROM (VALUES {listed})) AS v", params  # noqa: S608


def json_value(value: Any) -> str:
    return json.dumps(value)


def uuid_value(value: UUID) -> Any:
    return value if postgres() else value.hex


def datetime_value(value: datetime | None) -> Any:
    if value is None or postgres():
        return value
    return connection.ops.adapt_datetimefield_value(value)


def uuid_read(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def datetime_read(value: Any) -> Any:
    """An aware datetime, or None. SQLite gives Django's naive UTC as a naive datetime (a
    column it knows the type of) or as text (one it does not, as in some RETURNING lists)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def json_read(value: Any) -> Any:
    """Django reads jsonb (PostgreSQL) and JSON text (SQLite) as text; None stays None."""
    return json.loads(value) if isinstance(value, str | bytes) else value
