from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.dateparse import parse_date, parse_datetime

from signals_app.audit import audit_entries_list, audit_entry_as_dict
from signals_app.models import AuditEntry, Organization

# Entries read from the database at a time: the log may hold years of changes.
_CHUNK = 2000


def _since(text: str) -> datetime:
    """An ISO 8601 date or date-time; one without a zone is UTC."""
    try:
        parsed = parse_datetime(text)
        if parsed is None and (day := parse_date(text)) is not None:
            parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
    except ValueError:
        parsed = None
    if parsed is None:
        raise CommandError(f"--since must be an ISO 8601 date or date-time: {text!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class Command(BaseCommand):
    help = (
        "Print the audit log as JSON lines, oldest first: every change to organizations, "
        "memberships, signals, schema versions, API keys and webhook endpoints."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--organization", help="only this organization's entries (by slug; may be deleted)"
        )
        parser.add_argument("--since", help="only entries from this ISO 8601 date or time on")

    def handle(
        self, *args: Any, organization: str | None, since: str | None, **options: Any
    ) -> None:
        start = _since(since) if since is not None else None
        if organization is not None and not (
            Organization.objects.filter(slug=organization).exists()
            # A deleted organization's entries stay readable by its slug.
            or AuditEntry.objects.filter(organization_slug=organization).exists()
        ):
            raise CommandError(f"No organization with slug {organization!r}")
        entries = audit_entries_list(organization_slug=organization, since=start)
        # In a transaction: the server-side cursor behind iterator() then lives only as long as
        # it, which is what PgBouncer's transaction pooling needs (docs/deployment.md).
        with transaction.atomic():
            for entry in entries.iterator(chunk_size=_CHUNK):
                self.stdout.write(json.dumps(audit_entry_as_dict(entry), ensure_ascii=False))
