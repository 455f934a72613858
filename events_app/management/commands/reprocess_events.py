from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from events_app.pipeline.reprocess import REPROCESSABLE, events_reprocess, events_reprocess_queryset
from signals_app.models import Organization


class Command(BaseCommand):
    help = (
        "Send events through processing again (completed, failed or pending ones; never one in "
        "progress). Rollups are not counted twice: see docs/operations.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--status", choices=[str(s) for s in REPROCESSABLE])
        parser.add_argument("--signal", metavar="SLUG", help="only this signal's events")
        parser.add_argument("--organization", metavar="SLUG", help="only this organization")
        parser.add_argument(
            "--since", metavar="ISO", help="only events received at or after this time"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be reprocessed, change nothing"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        since = None
        if options["since"]:
            since = parse_datetime(options["since"])
            if since is None or since.tzinfo is None:
                raise CommandError(
                    f"--since must be an ISO 8601 time with a zone, e.g. 2026-01-31T00:00:00Z: "
                    f"{options['since']!r}"
                )
        organization_id = None
        if options["organization"]:
            organization = Organization.objects.filter(slug=options["organization"]).first()
            if organization is None:
                raise CommandError(f"Organization not found: {options['organization']}")
            organization_id = organization.pk
        events = events_reprocess_queryset(
            organization_id=organization_id,
            status=options["status"],
            signal_slug=options["signal"],
            since=since,
        )
        total = events.count()
        if options["dry_run"]:
            self.stdout.write(f"{total} event(s) would be reprocessed (dry run, nothing changed)")
            return
        with tqdm(
            total=total,
            unit="event",
            desc="reprocess",
            file=sys.stderr,
            disable=options["no_progress"],
        ) as bar:
            queued = events_reprocess(events=events, progress=bar.update)
        self.stdout.write(f"{queued} event(s) queued for reprocessing")
