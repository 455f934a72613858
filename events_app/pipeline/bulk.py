"""Set-based SQL for the pipeline: a whole chunk's values as one row source, on either database.

A chunk of events is worked on in a few statements, each taking every event's values at once.
On PostgreSQL they travel as ONE parameter, a JSON array of row objects that
`json_to_recordset(...)` turns back into typed rows: the statement's text is the same whatever
the chunk's size, Python encodes the whole chunk with one (C) `json.dumps`, and JSON columns
(results, rollups, states) are nested as they are instead of being encoded twice. (Arrays per
column with `unnest`, tried first, spent most of the worker's time quoting array elements in
psycopg's Python array dumper.) SQLite reads the same rows from a `VALUES` list (3.35+ also has
the RETURNING and upserts used with it).

`rows` takes Python values and adapts them by the column's type: UUIDs, datetimes, JSON.
Rows read back from raw SQL are turned into Python values by `uuid_read`, `datetime_read` and
`json_read`.
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


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID | datetime):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def rows(columns: Sequence[tuple[str, str]], values: Sequence[Sequence[Any]]) -> tuple[str, list]:
    """`<row source> AS v` for a FROM clause, and its parameters.

    `columns` are (name, PostgreSQL type) pairs, `values` rows of Python values in that order
    (never empty: a VALUES list needs a row). Column names must not clash with the columns of a
    table the statement also reads, since SQLite's UPDATE ... FROM cannot qualify them in
    RETURNING.
    """
    assert values, "a row source needs at least one row"
    names = [name for name, _ in columns]
    if postgres():
        typed = ", ".join(f'"{name}" {pg_type}' for name, pg_type in columns)
        document = json.dumps(
            [dict(zip(names, row, strict=True)) for row in values], default=_json_default
        )
        return f"json_to_recordset(%s::json) AS v({typed})", [document]
    adapters = [_SQLITE_ADAPTERS.get(pg_type) for _, pg_type in columns]
    params = [
        value if adapt is None or value is None else adapt(value)
        for row in values
        for adapt, value in zip(adapters, row, strict=True)
    ]
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    aliases = ", ".join(f'column{i} AS "{name}"' for i, name in enumerate(names, start=1))
    listed = ", ".join([row] * len(values))
    return f"(SELECT {aliases} FROM (VALUES {listed})) AS v", params  # noqa: S608


def datetime_value(value: datetime | None) -> Any:
    """A datetime as a parameter of its own (not in `rows`)."""
    if value is None or postgres():
        return value
    return connection.ops.adapt_datetimefield_value(value)


def _sqlite_datetime(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


_SQLITE_ADAPTERS: dict[str, Any] = {
    "uuid": lambda value: value.hex,
    "timestamptz": _sqlite_datetime,
    "timestamp with time zone": _sqlite_datetime,
    "jsonb": json.dumps,
}


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
