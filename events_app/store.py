"""Storing one event and touching its CRM record, atomically.

On PostgreSQL this is one statement in one round trip: a data-modifying CTE upserts the record
and inserts the event, in autocommit (a single statement is its own transaction). The ORM path
(BEGIN, upsert, insert, COMMIT: four round trips and most of the ingest path's ORM CPU) is what
every other database uses; both have the same outcome and CI runs the tests on both.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from django.db import IntegrityError, connection, transaction
from psycopg.types.json import Jsonb

from events_app.models import CrmRecord, Event


def crm_record_touch(
    *, organization_id: int, identity_type: str, identity_id: str, seen_at: datetime
) -> CrmRecord:
    """Create the record on first sight, or move its last_seen_at; one upsert either way."""
    record = CrmRecord(
        organization_id=organization_id,
        type=identity_type,
        external_id=identity_id,
        first_seen_at=seen_at,
        last_seen_at=seen_at,
    )
    CrmRecord.objects.bulk_create(
        [record],
        update_conflicts=True,
        unique_fields=["organization", "type", "external_id"],
        update_fields=["last_seen_at"],
    )
    return record


_EVENT_COLUMNS = (
    "id",
    "organization_id",
    "signal_id",
    "schema_version",
    "identity_type",
    "identity_id",
    "data",
    "timestamp",
    "received_at",
    "reference",
    "idempotency_key",
    "request_hash",
    "status",
    "attempts",
    "last_error",
)


@cache
def _postgres_sql() -> str:
    record, event = CrmRecord._meta.db_table, Event._meta.db_table
    columns = ", ".join(f'"{name}"' for name in _EVENT_COLUMNS)
    values = ", ".join(["%s"] * len(_EVENT_COLUMNS))
    # The conflict target names the partial unique index on (organization, idempotency_key):
    # a repeated key inserts nothing and returns no row; a concurrent twin waits for the first
    # insert to commit, then does the same.
    # Only model metadata and constants are interpolated; values go as parameters.
    return f"""
        WITH record AS (
            INSERT INTO "{record}" ("organization_id", "type", "external_id",
                                    "first_seen_at", "last_seen_at")
            SELECT %s, %s, %s, %s, %s
            -- A replay or a conflicting reuse of a key must not touch records either.
            WHERE NOT EXISTS (
                SELECT 1 FROM "{event}" WHERE "organization_id" = %s AND "idempotency_key" = %s
            )
            ON CONFLICT ("organization_id", "type", "external_id")
            DO UPDATE SET "last_seen_at" = EXCLUDED."last_seen_at"
            RETURNING "id"
        )
        INSERT INTO "{event}" ({columns}, "crm_record_id")
        SELECT {values}, record."id" FROM record
        ON CONFLICT ("organization_id", "idempotency_key")
            WHERE "idempotency_key" IS NOT NULL DO NOTHING
        RETURNING "crm_record_id"
    """  # noqa: S608


def _insert_postgres(event: Event) -> bool:
    params: list[Any] = [
        event.organization_id,
        event.identity_type,
        event.identity_id,
        event.received_at,
        event.received_at,
        event.organization_id,
        event.idempotency_key,
    ]
    params += [
        Jsonb(event.data) if name == "data" else getattr(event, name) for name in _EVENT_COLUMNS
    ]
    with connection.cursor() as cursor:
        cursor.execute(_postgres_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return False
    event.crm_record_id = row[0]
    return True


def _insert_orm(event: Event) -> bool:
    try:
        with transaction.atomic():
            record = crm_record_touch(
                organization_id=event.organization_id,
                identity_type=event.identity_type,
                identity_id=event.identity_id,
                seen_at=event.received_at,
            )
            event.crm_record_id = record.pk
            event.save(force_insert=True)
    except IntegrityError:
        if event.idempotency_key is None:
            raise
        return False
    return True


def event_insert(event: Event) -> bool:
    """Store the event (its `crm_record_id` is filled in) and touch its CRM record.

    False means nothing was stored because the organization already has an event with this
    idempotency key (the caller decides between replay and conflict).
    """
    if connection.vendor == "postgresql":
        return _insert_postgres(event)
    return _insert_orm(event)


_EVENT_COLUMN_TYPES = {
    "id": "uuid",
    "organization_id": "bigint",
    "signal_id": "bigint",
    "schema_version": "integer",
    "identity_type": "text",
    "identity_id": "text",
    "data": "jsonb",
    "timestamp": "timestamptz",
    "received_at": "timestamptz",
    "reference": "text",
    "idempotency_key": "text",
    "request_hash": "text",
    "status": "text",
    "attempts": "integer",
    "last_error": "text",
    "crm_record_id": "bigint",
}


@cache
def _postgres_many_sql() -> tuple[str, str]:
    record, event = CrmRecord._meta.db_table, Event._meta.db_table
    columns = ", ".join(f'"{name}"' for name in _EVENT_COLUMN_TYPES)
    # %b: binary parameters, so arrays are not quoted element by element.
    arrays = ", ".join(f"%b::{kind}[]" for kind in _EVENT_COLUMN_TYPES.values())
    records = f"""
        INSERT INTO "{record}" ("organization_id", "type", "external_id",
                                "first_seen_at", "last_seen_at")
        SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[],
                             %b::timestamptz[], %b::timestamptz[])
        ON CONFLICT ("organization_id", "type", "external_id")
        DO UPDATE SET "last_seen_at" = EXCLUDED."last_seen_at"
        RETURNING "id", "type", "external_id"
    """  # noqa: S608
    events = f'INSERT INTO "{event}" ({columns}) SELECT * FROM unnest({arrays})'  # noqa: S608
    return records, events


def _insert_many_postgres(events: list[Event]) -> None:
    # Column arrays and unnest(): two statements whatever the batch size, and none of the ORM's
    # per-field preparation (most of a batch's CPU through bulk_create).
    records_sql, events_sql = _postgres_many_sql()
    organization_id = events[0].organization_id
    identities = list(dict.fromkeys((e.identity_type, e.identity_id) for e in events))
    seen_at = events[0].received_at
    # wrap_database_errors: psycopg's errors become Django's (IntegrityError...) as through
    # Django's own cursor.
    with transaction.atomic(), connection.wrap_database_errors:
        connection.ensure_connection()
        # psycopg's own cursor binds parameters server-side: arrays travel as arrays, not as
        # quoted literals built element by element (Django's cursor binds client-side).
        cursor = psycopg.Cursor(connection.connection)
        cursor.execute(
            records_sql,
            [
                [organization_id] * len(identities),
                [kind for kind, _ in identities],
                [external for _, external in identities],
                [seen_at] * len(identities),
                [seen_at] * len(identities),
            ],
        )
        record_ids = {(kind, external): pk for pk, kind, external in cursor.fetchall()}
        for event in events:
            event.crm_record_id = record_ids[(event.identity_type, event.identity_id)]
        columns: list[list[Any]] = [[] for _ in _EVENT_COLUMN_TYPES]
        for event in events:
            for column, name in zip(columns, _EVENT_COLUMN_TYPES, strict=True):
                value = getattr(event, name)
                column.append(Jsonb(value) if name == "data" else value)
        cursor.execute(events_sql, columns)
        cursor.close()


def events_insert_many(events: list[Event]) -> None:
    """Store several events of one organization and touch their CRM records, in one
    transaction (callers have already settled idempotency keys; a race on one raises
    IntegrityError and stores nothing)."""
    if not events:
        return
    if connection.vendor == "postgresql":
        _insert_many_postgres(events)
        return
    with transaction.atomic():
        records: dict[tuple[int, str, str], CrmRecord] = {}
        for event in events:
            identity = (event.organization_id, event.identity_type, event.identity_id)
            if identity not in records:
                # One row per record: ON CONFLICT DO UPDATE may not touch a row twice.
                records[identity] = CrmRecord(
                    organization_id=event.organization_id,
                    type=event.identity_type,
                    external_id=event.identity_id,
                    first_seen_at=event.received_at,
                    last_seen_at=event.received_at,
                )
        CrmRecord.objects.bulk_create(
            list(records.values()),
            update_conflicts=True,
            unique_fields=["organization", "type", "external_id"],
            update_fields=["last_seen_at"],
        )
        for event in events:
            record = records[(event.organization_id, event.identity_type, event.identity_id)]
            event.crm_record_id = record.pk
        Event.objects.bulk_create(events)
