"""Idempotency keys move from the events table to their own table, IdempotencyKey.

A partitioned events table (0017) cannot keep a unique index without its partition key, so the
promise "one event per (organization, key)" moves to `events_app_idempotencykey`. The events
keep their `idempotency_key` column (reads show it), no longer unique.

Steps and the locks they take on PostgreSQL (the migration is not atomic: each step is its own
transaction, so no lock is held across the copy):

1. Create the key table and its unique (organization, key) index: a new, empty table; nothing
   else is locked.
2. Copy the keys, in chunks of 10,000 events walked in (organization, key) order through the
   events' partial unique index, one INSERT ... SELECT per chunk in autocommit: ACCESS SHARE on
   the events (reads and writes go on), ROW EXCLUSIVE on the key table. Events stored meanwhile
   are caught up in step 3.
3. One transaction: SHARE lock on the events (reads go on; writes wait), copy the keys step 2
   has not seen (an anti-join of the two unique indexes), then drop the events' unique index
   `event_idempotency_key_unique_in_org` (ACCESS EXCLUSIVE, held until the commit, which
   follows at once).

Measured on a busy 2-core machine with 1,000,000 events, 800,000 of them keyed: step 2 took
14 s, step 3 (writes waiting) 3.7 s.

Processes of the previous release that keep serving after this migration record their keys on
the events only: pause ingest during the release's migrate and restart (docs/deployment.md).
SQLite (development, tests) copies in one statement.
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models, transaction

CHUNK_SIZE = 10_000

_KEY_COLUMNS = (
    '"event_id", "organization_id", "key", "received_at", "request_hash", "schema_version", '
    '"reference"'
)
_EVENT_COLUMNS = (
    'e."id", e."organization_id", e."idempotency_key", e."received_at", e."request_hash", '
    'e."schema_version", e."reference"'
)

# Postgres, step 2: one chunk after the (organization, key) position given; returns the last
# position copied (no row: done). The row comparison walks the partial unique index.
_CHUNK_SQL = f"""
    WITH "chunk" AS (
        SELECT {_EVENT_COLUMNS} FROM "events_app_event" e
        WHERE e."idempotency_key" IS NOT NULL
          AND (e."organization_id", e."idempotency_key") > (%s, %s)
        ORDER BY e."organization_id", e."idempotency_key"
        LIMIT %s
    ),
    "copied" AS (
        INSERT INTO "events_app_idempotencykey" ({_KEY_COLUMNS})
        SELECT * FROM "chunk"
        ON CONFLICT ("organization_id", "key") DO NOTHING
    )
    SELECT "organization_id", "idempotency_key" FROM "chunk"
    ORDER BY "organization_id" DESC, "idempotency_key" DESC
    LIMIT 1
"""  # noqa: S608

# Both databases: every key not copied yet (SQLite: all of them; PostgreSQL, step 3: those
# stored during step 2).
_CATCH_UP_SQL = f"""
    INSERT INTO "events_app_idempotencykey" ({_KEY_COLUMNS})
    SELECT {_EVENT_COLUMNS} FROM "events_app_event" e
    WHERE e."idempotency_key" IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM "events_app_idempotencykey" k
          WHERE k."organization_id" = e."organization_id" AND k."key" = e."idempotency_key"
      )
"""  # noqa: S608


def copy_keys_in_chunks(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return  # step 3 copies everything in one statement
    position: tuple[int, str] | None = (0, "")  # before every key: organization ids start at 1
    with schema_editor.connection.cursor() as cursor:
        while position is not None:
            cursor.execute(_CHUNK_SQL, [*position, CHUNK_SIZE])
            found = cursor.fetchone()
            position = (found[0], found[1]) if found else None


def catch_up_and_drop_unique_index(apps: Any, schema_editor: Any) -> None:
    Event = apps.get_model("events_app", "Event")
    db = schema_editor.connection
    # One transaction (SeparateDatabaseAndState's inner operation is not wrapped for us): no
    # key can be stored between the catch-up and the drop.
    with transaction.atomic(using=db.alias), db.cursor() as cursor:
        if db.vendor == "postgresql":
            cursor.execute('LOCK TABLE "events_app_event" IN SHARE MODE')
        cursor.execute(_CATCH_UP_SQL)
        schema_editor.remove_constraint(Event, _OLD_CONSTRAINT)


def restore_unique_index(apps: Any, schema_editor: Any) -> None:
    # Backwards: the key table is dropped next; the events' index comes back as it was (keys
    # stored since then are on the events too, so it still holds).
    Event = apps.get_model("events_app", "Event")
    schema_editor.add_constraint(Event, _OLD_CONSTRAINT)


_OLD_CONSTRAINT = models.UniqueConstraint(
    fields=["organization", "idempotency_key"],
    condition=models.Q(idempotency_key__isnull=False),
    name="event_idempotency_key_unique_in_org",
)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("events_app", "0015_event_invalid_index"),
        ("signals_app", "0005_audit_log"),
    ]

    operations = [
        migrations.CreateModel(
            name="IdempotencyKey",
            fields=[
                (
                    "event_id",
                    models.UUIDField(primary_key=True, serialize=False, verbose_name="event ID"),
                ),
                ("key", models.CharField(max_length=255)),
                ("received_at", models.DateTimeField()),
                ("request_hash", models.CharField(max_length=64)),
                ("schema_version", models.PositiveIntegerField(blank=True, null=True)),
                ("reference", models.CharField(blank=True, max_length=255, null=True)),
                (
                    "organization",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="idempotency_keys",
                        to="signals_app.organization",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("organization", "key"), name="idempotency_key_unique_in_org"
                    )
                ],
            },
        ),
        migrations.RunPython(
            copy_keys_in_chunks, migrations.RunPython.noop, atomic=False, elidable=False
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(
                    model_name="event", name="event_idempotency_key_unique_in_org"
                ),
            ],
            database_operations=[
                migrations.RunPython(catch_up_and_drop_unique_index, restore_unique_index),
            ],
        ),
    ]
