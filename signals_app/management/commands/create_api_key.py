from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from signals_app.management.commands._base import ControlPlaneCommand, run_service
from signals_app.models import ApiScope, Organization
from signals_app.services import api_key_create

# A hundred years: beyond it a key is as good as one that never expires, and a larger number
# would overflow the date arithmetic.
MAX_EXPIRY_DAYS = 36_500


def _list(value: str | None) -> list[str] | None:
    """ "a, b" -> ["a", "b"]; None when the option was left out. "" is an empty list, which
    the service refuses with its own message."""
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


class Command(ControlPlaneCommand):
    help = (
        "Create an API key and print it (only the key, on stdout). It is never shown again. "
        "Without --scopes, --signals and --expires-in-days it has full access to its "
        "organization's data and never expires."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", required=True, help="organization slug")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--scopes",
            help=f"comma-separated scopes (default: all): {', '.join(ApiScope.values)}",
        )
        parser.add_argument(
            "--signals",
            help="comma-separated signal slugs the key may write and read (default: all)",
        )
        parser.add_argument(
            "--expires-in-days",
            type=int,
            help="the key stops working this many days from now (default: never)",
        )

    def handle(
        self,
        *args: Any,
        organization: str,
        name: str,
        scopes: str | None,
        signals: str | None,
        expires_in_days: int | None,
        **options: Any,
    ) -> None:
        org = Organization.objects.filter(slug=organization).first()
        if org is None:
            raise CommandError(f"No organization with slug {organization!r}")
        expires_at = None
        if expires_in_days is not None:
            if not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
                raise CommandError(
                    f"--expires-in-days must be a whole number from 1 to {MAX_EXPIRY_DAYS}"
                )
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        _, raw = run_service(
            api_key_create,
            organization=org,
            name=name,
            scopes=_list(scopes),
            signals=_list(signals),
            expires_at=expires_at,
        )
        self.stdout.write(raw)
