from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from signals_app.management.commands._base import ControlPlaneCommand, run_service
from signals_app.services import api_key_find, api_key_revoke


class Command(ControlPlaneCommand):
    help = "Revoke an API key, named by the prefix the admin shows (sk_XXXXXXXX) or the full key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix_or_key")

    def handle(self, *args: Any, prefix_or_key: str, **options: Any) -> None:
        api_key = run_service(api_key_find, prefix_or_key=prefix_or_key)
        was_revoked = api_key.revoked
        run_service(api_key_revoke, api_key=api_key)
        state = "was already revoked" if was_revoked else "revoked"
        self.stdout.write(f"{api_key.prefix} ({api_key.organization.slug}) {state}")
