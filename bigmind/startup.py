"""A configuration error at start-up is one line naming the setting, not a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


def settings_load_or_exit(program: str) -> None:
    """Load the Django settings now; on ImproperlyConfigured print one line and exit 1.

    Without this, `manage.py <command>` with a setting missing printed some 40 lines, starting
    with a misleading `KeyError: '<command>'` (Django looks the command up among the apps of
    settings it could not load) and ending with the real message (issue #12).
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018 (imports the settings module)
    except ImproperlyConfigured as exc:
        configuration_error_exit(program, exc)


def configuration_error_line(program: str, error: Exception) -> str:
    """`<program>: configuration error: <message>`, the message folded onto one line."""
    message = " ".join(str(error).split())
    return f"{program}: configuration error: {message}"


def configuration_error_exit(program: str, error: Exception) -> NoReturn:
    """`configuration_error_line` on stderr, then exit status 1."""
    print(configuration_error_line(program, error), file=sys.stderr)
    raise SystemExit(1) from None
