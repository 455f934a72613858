"""How the admin and the dashboard write values for people: one date style everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

# The same as bigmind/formats/en/formats.py's DATETIME_FORMAT, for values rendered in code.
DATETIME_DISPLAY_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def datetime_display(value: datetime | None) -> str:
    """`2026-12-02 20:00:36 UTC`; "-" for no value."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime(DATETIME_DISPLAY_FORMAT)
