"""System checks of events_app's settings, run by `manage.py check --deploy` (the release gate,
docs/deployment.md)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

# As Django asks of DJANGO_SECRET_KEY (security.W009), in characters.
REDACTION_KEY_MIN_LENGTH = 50


@register(Tags.security, deploy=True)
def redaction_key_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """BIGMIND_REDACTION_KEY set, long, and not DJANGO_SECRET_KEY: the hashes of redacted values
    derive from it, so it must be secret and must not change when DJANGO_SECRET_KEY rotates."""
    key = settings.BIGMIND_REDACTION_KEY
    if not key:
        problem = "is not set, so redaction hashes derive from DJANGO_SECRET_KEY"
    elif key == settings.SECRET_KEY:
        problem = "is DJANGO_SECRET_KEY"
    elif len(key) < REDACTION_KEY_MIN_LENGTH or len(set(key)) < 5:
        problem = f"is weak (under {REDACTION_KEY_MIN_LENGTH} characters or 5 distinct ones)"
    else:
        return []
    return [
        Warning(
            f"BIGMIND_REDACTION_KEY {problem}: hashed values would change when that key is "
            "rotated, or could be guessed.",
            hint="Set BIGMIND_REDACTION_KEY to 50 or more random characters of its own and "
            "never change it (docs/governance.md, 'Redaction').",
            id="events_app.W001",
        )
    ]
