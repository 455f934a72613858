"""The events table becomes range-partitioned by received_at on PostgreSQL.

1. EventTransition.event loses its database foreign key (`db_constraint=False`): a partitioned
   table's primary key is (id, received_at), so no key can point at `id` alone. The ORM still
   deletes an event's transitions with it, and retention deletes them with their partition.
   Dropping the constraint takes SHARE ROW EXCLUSIVE on both tables for a moment. (SQLite
   rebuilds the transitions table: development data only.)
2. On PostgreSQL, the chunked conversion of events_app/partitions/conversion.py: its docstring
   lists each step and the lock it takes (docs/operations.md, "Upgrading a large deployment").
   In short: a change-log trigger (a moment of SHARE ROW EXCLUSIVE), a copy in chunks of 50,000
   rows in short autocommit statements (ACCESS SHARE: reads and writes go on), the indexes built
   on the new table, the rows changed meanwhile copied again, then one short transaction under
   ACCESS EXCLUSIVE (the last changes, the swap of the names), and the old table dropped.
   Nothing to do when the table is partitioned already (a fresh database converts its empty
   table here; `manage.py event_partitions --convert` may have run it before `migrate`), nor on
   SQLite, which keeps a plain table.

Backwards (`migrate events_app 0016`), the table becomes one plain table again in a single
transaction under ACCESS EXCLUSIVE (`events_unconvert`): for development and test databases; a
large deployment restores the backup taken before the release instead.

The partitions ahead are then made by the post_migrate handler (events_app/apps.py).
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

from events_app.partitions.conversion import events_convert, events_unconvert


def convert(apps: Any, schema_editor: Any) -> None:
    events_convert(db=schema_editor.connection, progress=print)


def unconvert(apps: Any, schema_editor: Any) -> None:
    events_unconvert(db=schema_editor.connection)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("events_app", "0016_idempotency_keys"),
    ]

    operations = [
        migrations.AlterField(
            model_name="eventtransition",
            name="event",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="transitions",
                to="events_app.event",
            ),
        ),
        migrations.RunPython(convert, unconvert, atomic=False, elidable=False),
    ]
