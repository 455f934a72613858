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


def short_id_text(value: object) -> str:
    """Eight characters that tell ids apart: the last 8, after an ellipsis. Event and rejection
    ids are UUIDv7, whose first 8 characters are the top of a millisecond timestamp: every id
    made within about 65 seconds starts the same, so a list of first-8 prefixes showed one
    value many times. The tail is random."""
    text = str(value)
    return text if len(text) <= 8 else "\u2026" + text[-8:]


def short_id(value: object, *, url: str | None = None) -> SafeString:
    """A short id (`short_id_text`) with the whole id on hover (and in the link's target when
    `url` is given): list columns stay narrow; detail pages show ids whole."""
    text, short = str(value), short_id_text(value)
    if url is None:
        return format_html('<span class="bigmind-id" title="{}">{}</span>', text, short)
    return format_html('<a class="bigmind-id" href="{}" title="{}">{}</a>', url, text, short)
