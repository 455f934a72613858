from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError

from bigmind.errors import ApplicationError
from bigmind.json_path import detail_line
from signals_app.audit import audit_actor
from signals_app.models import AuditActorKind

T = TypeVar("T")


def run_service(call: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a service, turning its domain errors into a clean CommandError (exit status 1)."""
    try:
        return call(**kwargs)
    except ApplicationError as exc:
        # The details (schema violations, compatibility reasons) are what the operator needs.
        lines = [exc.message]
        for item in exc.details or []:
            if isinstance(item, dict) and "message" in item:
                lines.append(f"  {detail_line(item)}")
            else:
                lines.append(f"  {item}")
        raise CommandError("\n".join(lines)) from exc


class ControlPlaneCommand(BaseCommand):
    """A command that changes the control plane: what it changes is recorded in the audit log
    as made by the command, named as it is run (`create_api_key`)."""

    def execute(self, *args: Any, **options: Any) -> str | None:
        name = type(self).__module__.rsplit(".", 1)[-1]
        with audit_actor(AuditActorKind.COMMAND, name):
            return super().execute(*args, **options)
