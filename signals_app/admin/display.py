"""What the signals app's admin pages share: their CSS and a list cell for long text."""

from __future__ import annotations

from django.utils.html import format_html


def clipped(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters for a list column, the whole of it on hover: a 200-
    character name would otherwise make its column, and the list, wider than the window."""
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: limit - 1].rstrip())


# The signals app's own CSS: lists that fit the window with the sidebar open, schema panes.
# Only on this app's admins (the events app's admins subclass OrganizationScopedAdmin too).
SIGNALS_ADMIN_CSS = {"all": ("signals_app/admin.css",)}
