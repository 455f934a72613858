"""The one form the API writes a date-time in: ISO 8601 in UTC with a `Z`, to the microsecond
when there is a fraction (`2026-03-16T12:00:00Z`, `2026-03-16T12:00:00.123456Z`).

Python's `isoformat()` writes UTC as `+00:00`; every date-time the API answers, whether read
from a column or written into stored JSON (an event's `result`), goes through `iso_utc` so that
clients see one form.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_utc(value: datetime) -> str: ...
@overload
def iso_utc(value: None) -> None: ...
def iso_utc(value: datetime | None) -> str | None:
    """`value` in the API's form; a naive value is taken as UTC (the project stores UTC)."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def iso_utc_text(text: str) -> str:
    """A date-time already stored as text (older stored JSON), rewritten in the API's form;
    text that is not a date-time is returned as it is."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text
    return iso_utc(parsed)
