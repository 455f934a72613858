from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from events_app import dialect
from events_app.partitions.conversion import conversion_needed, events_convert
from events_app.partitions.upkeep import is_partitioned, partitions_ensure, partitions_list


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


class Command(BaseCommand):
    help = (
        "List the events table's partitions (range, estimated rows, size) on PostgreSQL; "
        "--create makes the ones ahead now (what beat's events.partitions and migrate do); "
        "--convert converts an unpartitioned table in chunks, before `migrate` if you want it "
        "out of band. See docs/operations.md, 'Partitions'."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--create", action="store_true", help="create the partitions ahead")
        parser.add_argument(
            "--convert",
            action="store_true",
            help="convert the unpartitioned events table (migration 0017's work; needs 0016)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not dialect.postgres(connection):
            raise CommandError("the events table is partitioned on PostgreSQL only (SQLite: plain)")
        if options["convert"]:
            if not conversion_needed():
                self.stdout.write("the events table is partitioned already: nothing to convert")
            else:
                events_convert(progress=self.stdout.write)
        if not is_partitioned():
            raise CommandError(
                "the events table is not partitioned: run `manage.py migrate` "
                "(or this command with --convert)"
            )
        if options["create"]:
            created = partitions_ensure()
            self.stdout.write(f"created: {', '.join(created) if created else 'none needed'}")
        for part in partitions_list():
            where = (
                "DEFAULT (rows no other partition covers)"
                if part.start is None or part.end is None
                else f"{part.start:%Y-%m-%d %H:%M} to {part.end:%Y-%m-%d %H:%M} UTC"
            )
            rows = "not analyzed" if part.rows_estimate < 0 else f"~{part.rows_estimate} rows"
            self.stdout.write(f"{part.name}  {where}  {rows}  {_size(part.bytes)}")
