from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from signals_app.management.commands._base import ControlPlaneCommand, run_service
from signals_app.models import Organization
from signals_app.services import api_key_create


class Command(ControlPlaneCommand):
    help = "Create an API key and print it (only the key, on stdout). It is never shown again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", required=True, help="organization slug")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, organization: str, name: str, **options: Any) -> None:
        org = Organization.objects.filter(slug=organization).first()
        if org is None:
            raise CommandError(f"No organization with slug {organization!r}")
        _, raw = run_service(api_key_create, organization=org, name=name)
        self.stdout.write(raw)
