"""How the admin and the dashboard write values for people: one date style everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils.html import format_html
from django.utils.safestring import SafeString

# The same as bigmind/formats/en/formats.py's DATETIME_FORMAT, for values rendered in code.
DATETIME_DISPLAY_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def datetime_display(value: datetime | None) -> str:
    """`2026-12-02 20:00:36 UTC`; "-" for no value."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime(DATETIME_DISPLAY_FORMAT)


def short_id(value: object, *, url: str | None = None) -> SafeString:
    """The first 8 characters of an id, the whole id on hover (and in the link's target when
    `url` is given): list columns stay narrow; detail pages show ids whole."""
    text = str(value)
    if url is None:
        return format_html('<span class="bigmind-id" title="{}">{}</span>', text, text[:8])
    return format_html('<a class="bigmind-id" href="{}" title="{}">{}</a>', url, text, text[:8])
