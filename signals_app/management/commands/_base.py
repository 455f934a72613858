from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.core.management.base import CommandError

from bigmind.errors import ApplicationError

T = TypeVar("T")


def run_service(call: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a service, turning its domain errors into a clean CommandError (exit status 1)."""
    try:
        return call(**kwargs)
    except ApplicationError as exc:
        raise CommandError(exc.message) from exc
