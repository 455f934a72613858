from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from signals_app.management.commands._base import ControlPlaneCommand, run_service
from signals_app.services import organization_get_or_create


class Command(ControlPlaneCommand):
    help = "Create an organization (tenant); does nothing if it exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default=None)

    def handle(self, *args: Any, slug: str, name: str | None, **options: Any) -> None:
        organization, created = run_service(organization_get_or_create, slug=slug, name=name)
        verb = "created" if created else "exists"
        self.stderr.write(f"organization {organization.slug} {verb}")
        self.stdout.write(organization.slug)
