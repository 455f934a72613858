from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from events_app.ingest.rejections import rejections_purge
from events_app.models import RejectedEvent
from events_app.retention import retention_purge


def _kept(cutoff: Any, what: str = "received") -> str:
    return "kept forever" if cutoff is None else f"{what} before {cutoff:%Y-%m-%d %H:%M:%S} UTC"


class Command(BaseCommand):
    help = (
        "Delete what retention has expired, once, now: completed and failed events, metric "
        "buckets, webhook deliveries, audit log entries, idempotency keys and rejected events "
        "(what beat's events.purge and events.purge_rejections do). See docs/operations.md, "
        "'Retention'."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = options["dry_run"]
        now = timezone.now()
        result = retention_purge(now=now, dry_run=dry_run)
        verb = "would be deleted (dry run, nothing changed)" if dry_run else "deleted"
        cutoffs = result.cutoffs
        self.stdout.write(
            f"completed events: {result.completed_events} {verb} ({_kept(cutoffs['completed'])})"
        )
        self.stdout.write(
            f"failed events: {result.failed_events} {verb} ({_kept(cutoffs['failed'])})"
        )
        dropped = result.dropped_partitions
        self.stdout.write(
            f"event partitions: {len(dropped)} "
            f"{'would be dropped' if dry_run else 'dropped'} whole"
            + (f" ({', '.join(dropped)}; their events are counted above)" if dropped else "")
        )
        self.stdout.write(
            f"metric buckets: {result.metric_buckets} {verb} "
            f"({_kept(cutoffs['metric_buckets'], 'whole periods ended')})"
        )
        self.stdout.write(
            f"webhook deliveries: {result.webhook_deliveries} {verb} "
            f"({_kept(cutoffs['webhook_deliveries'], 'finished')})"
        )
        self.stdout.write(
            f"audit log entries: {result.audit_entries} {verb} "
            f"({_kept(cutoffs['audit_entries'], 'recorded')})"
        )
        self.stdout.write(
            f"idempotency keys: {result.idempotency_keys} {verb} "
            f"({_kept(cutoffs['idempotency_keys'])}, their events gone)"
        )
        if dry_run:
            # The same cutoff as rejections_purge (which has no dry run of its own).
            cutoff = now - timedelta(days=settings.BIGMIND_REJECTION_RETENTION_DAYS)
            rejections = RejectedEvent.objects.filter(received_at__lt=cutoff).count()
        else:
            rejections = rejections_purge(now=now).rejections
        self.stdout.write(f"rejected events: {rejections} {verb}")
