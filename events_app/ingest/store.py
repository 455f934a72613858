"""Storing events and touching their CRM records, atomically.

`events_store` stores a group of single events, each on its own: POST /v1/events hands its row
to the process's group-commit writer (events_app/ingest/group_commit.py), which stores everything
the request threads handed it meanwhile with one call. On PostgreSQL that is one statement in
autocommit (one round trip and one WAL flush for the whole group): a data-modifying CTE
upserts the CRM records and inserts the events. Other databases run the ORM upsert and insert
per row, each in a savepoint of one transaction. Both give each row its own outcome: stored,
an existing event holding its idempotency key, or an error that is that row's alone.

Idempotency keys are held by IdempotencyKey, written with the event (same statement or same
transaction): its unique (organization, key) index decides which request stores an event. A key
outlives its event (retention); a replay is then answered from the key row alone, its status
`purged`.

`events_insert_many` stores a batch request's events all or nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import OuterRef, Subquery
from psycopg.types.json import Jsonb

from events_app import dialect
from events_app.models import CrmRecord, Event, EventStatus, IdempotencyKey


@dataclass(slots=True)
class NewEvent:
    """A checked single event, ready to store (status pending, no attempt yet)."""

    id: UUID
    organization_id: int
    signal_id: int
    schema_version: int | None
    identity_type: str
    identity_id: str
    data: dict[str, Any]
    timestamp: datetime
    received_at: datetime
    reference: str | None
    idempotency_key: str | None
    request_hash: str
    # False: accepted under the signal's `flag` enforcement although `data` failed its schema;
    # `violations` is then the `details` list a 400 would have carried (None when valid).
    schema_valid: bool = True
    violations: list[dict[str, str]] | None = None


# NewEvent's field names, which are Event's column names too.
_NEW_EVENT_FIELDS = tuple(field.name for field in fields(NewEvent))


def event_model(row: NewEvent) -> Event:
    """The Event model instance of a new row (not saved): the batch path's bulk insert."""
    return Event(
        **{name: getattr(row, name) for name in _NEW_EVENT_FIELDS},
        status=EventStatus.PENDING,
        attempts=0,
        last_error="",
    )


# A replay's status when its key remains but retention has deleted the event.
STATUS_PURGED = "purged"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """The event that already holds a row's idempotency key: enough to answer a replay."""

    id: UUID
    request_hash: str
    schema_version: int | None
    status: str  # the event's status now, or STATUS_PURGED
    reference: str | None


def stored_events_by_key(*, organization_id: int, keys: Iterable[str]) -> dict[str, StoredEvent]:
    """The events holding these keys of the organization, by key: one query, each key with its
    event's status now (looked up by id and received_at, which names the event's partition)."""
    status = Event.objects.filter(
        pk=OuterRef("event_id"), received_at=OuterRef("received_at")
    ).values("status")[:1]
    held = IdempotencyKey.objects.filter(
        organization_id=organization_id, key__in=list(keys)
    ).annotate(event_status=Subquery(status))
    return {
        key.key: StoredEvent(
            id=key.event_id,
            request_hash=key.request_hash,
            schema_version=key.schema_version,
            status=key.event_status or STATUS_PURGED,
            reference=key.reference,
        )
        for key in held
    }


@dataclass(slots=True)
class StoreOutcome:
    """What became of one row: stored (`inserted`), or not because `existing` holds its
    idempotency key, or `error` (that row's alone; raise it for that request)."""

    inserted: bool
    existing: StoredEvent | None = None
    error: BaseException | None = None


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


# The group statement's cursor, per thread and connection: a psycopg cursor copies the
# connection's adapters when it is made, which was a tenth of a small group's client CPU.
# psycopg's own cursor binds parameters server-side (Django's binds client-side).
_cursors = threading.local()


def _group_cursor(db: BaseDatabaseWrapper) -> psycopg.Cursor[Any]:
    db.ensure_connection()
    pg = db.connection
    cached = getattr(_cursors, "cursor", None)
    if cached is None or cached.connection is not pg or cached.closed:
        cached = _cursors.cursor = psycopg.Cursor(pg)
    return cached


_ROWS_ENCODER = json.JSONEncoder(separators=(",", ":"))


def group_rows_json(rows: list[NewEvent]) -> str:
    """The one parameter of `events_group_insert_sql()`: the group's rows as a JSON array (public:
    the plan test prepares that statement with it)."""
    return _ROWS_ENCODER.encode(
        [
            {
                "id": str(row.id),
                "organization_id": row.organization_id,
                "signal_id": row.signal_id,
                "schema_version": row.schema_version,
                "identity_type": row.identity_type,
                "identity_id": row.identity_id,
                "data": row.data,
                "timestamp": row.timestamp.isoformat(),
                "received_at": row.received_at.isoformat(),
                "reference": row.reference,
                "idempotency_key": row.idempotency_key,
                "request_hash": row.request_hash,
                "schema_valid": row.schema_valid,
                "violations": row.violations,
            }
            for row in rows
        ]
    )


def _group_insert_postgres(db: BaseDatabaseWrapper, rows: list[NewEvent]) -> list[StoreOutcome]:
    payload = group_rows_json(rows)
    with db.wrap_database_errors:
        cursor = _group_cursor(db)
        cursor.execute(dialect.events_group_insert_sql(), [payload])
        stored = {record[0] for record in cursor.fetchall()}
        missing = [row for row in rows if row.id not in stored]
        found: list[Any] = []
        if missing:
            keyed = [row for row in missing if row.idempotency_key is not None]
            cursor.execute(
                dialect.events_existing_sql(),
                [
                    [row.id for row in missing],
                    [row.received_at for row in missing],
                    [row.organization_id for row in keyed],
                    [row.idempotency_key for row in keyed],
                ],
            )
            found = cursor.fetchall()
    return _outcomes(rows, stored, found)


def _outcomes(rows: list[NewEvent], stored: set[UUID], found: list[Any]) -> list[StoreOutcome]:
    # events_existing_sql's rows: an event stored already (only its id), or a key held already.
    by_id = {record[0] for record in found if record[1] is None}
    by_key = {
        (record[1], record[2]): StoredEvent(
            id=record[0],
            request_hash=record[3],
            schema_version=record[4],
            status=record[5] or STATUS_PURGED,
            reference=record[6],
        )
        for record in found
        if record[1] is not None
    }
    outcomes = []
    for row in rows:
        existing = by_key.get((row.organization_id, row.idempotency_key))
        if row.id in stored or row.id in by_id or (existing is not None and existing.id == row.id):
            # by_id, or its key held by its own id: stored by an earlier try of this group
            # whose commit went unconfirmed.
            outcomes.append(StoreOutcome(inserted=True))
        elif existing is None:
            # Skipped for a key that retention then deleted (its event gone too) before we
            # looked: the client's retry stores it.
            error = IntegrityError("the idempotency key changed meanwhile; retry")
            outcomes.append(StoreOutcome(inserted=False, error=error))
        else:
            outcomes.append(StoreOutcome(inserted=False, existing=existing))
    return outcomes


def _store_postgres(db: BaseDatabaseWrapper, rows: list[NewEvent]) -> list[StoreOutcome]:
    try:
        return _group_insert_postgres(db, rows)
    except (OperationalError, InterfaceError):
        raise  # the connection or the server: the caller's to retry or report
    except DatabaseError as exc:
        if len(rows) == 1:
            return [StoreOutcome(inserted=False, error=exc)]
        # One row the database refuses fails the statement: store each on its own, so that
        # it fails alone and its neighbours are stored.
        return [outcome for row in rows for outcome in _store_postgres(db, [row])]


def key_row(event: NewEvent | Event) -> IdempotencyKey:
    """The key row of an event that has an idempotency key (not saved)."""
    assert event.idempotency_key is not None
    return IdempotencyKey(
        **{column: getattr(event, name) for column, name in dialect.KEY_FROM_EVENT.items()}
    )


def _key_outcome(row: NewEvent) -> StoreOutcome | None:
    """The outcome of a row whose key is held already (None: not held)."""
    assert row.idempotency_key is not None
    held = stored_events_by_key(
        organization_id=row.organization_id, keys=[row.idempotency_key]
    ).get(row.idempotency_key)
    if held is None:
        return None
    if held.id == row.id:  # an earlier try of this group was committed
        return StoreOutcome(inserted=True)
    return StoreOutcome(inserted=False, existing=held)


def _store_orm_row(row: NewEvent) -> StoreOutcome:
    event = Event(
        id=row.id,
        organization_id=row.organization_id,
        signal_id=row.signal_id,
        schema_version=row.schema_version,
        identity_type=row.identity_type,
        identity_id=row.identity_id,
        data=row.data,
        timestamp=row.timestamp,
        received_at=row.received_at,
        reference=row.reference,
        idempotency_key=row.idempotency_key,
        request_hash=row.request_hash,
        schema_valid=row.schema_valid,
        violations=row.violations,
        status=EventStatus.PENDING,
        attempts=0,
        last_error="",
    )
    if row.idempotency_key is not None:
        outcome = _key_outcome(row)
        if outcome is not None:
            return outcome
    try:
        with transaction.atomic():  # a savepoint: a refused row leaves its neighbours
            if row.idempotency_key is not None:
                # First: the key's unique index decides before anything else is written.
                key_row(row).save(force_insert=True)
            record = crm_record_touch(
                organization_id=row.organization_id,
                identity_type=row.identity_type,
                identity_id=row.identity_id,
                seen_at=row.received_at,
            )
            event.crm_record_id = record.pk
            event.save(force_insert=True)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError as exc:
        if isinstance(exc, IntegrityError) and Event.objects.filter(pk=row.id).exists():
            return StoreOutcome(inserted=True)  # an earlier try of this group was committed
        if isinstance(exc, IntegrityError) and row.idempotency_key is not None:
            # Another process stored the key between our look and our insert.
            outcome = _key_outcome(row)
            if outcome is not None:
                return outcome
        return StoreOutcome(inserted=False, error=exc)
    return StoreOutcome(inserted=True)


def _store_orm(rows: list[NewEvent]) -> list[StoreOutcome]:
    # One transaction (on SQLite: one BEGIN IMMEDIATE, one commit) for the group.
    try:
        with transaction.atomic():
            return [_store_orm_row(row) for row in rows]
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError as exc:
        # Foreign keys are checked at commit (Django declares them deferred), so a row that
        # breaks one fails the whole transaction: store each on its own, as on PostgreSQL.
        if len(rows) == 1:
            return [StoreOutcome(inserted=False, error=exc)]
        return [outcome for row in rows for outcome in _store_orm([row])]


def events_store(rows: list[NewEvent]) -> list[StoreOutcome]:
    """Store single events on this thread's connection, each row on its own (see the module).

    Raises only for the connection or the server (OperationalError, InterfaceError): then
    nothing of the group may be taken as stored or as not stored.
    """
    if not rows:
        return []
    db = connections[DEFAULT_DB_ALIAS]  # this thread's wrapper, looked up once
    if dialect.postgres(db):
        return _store_postgres(db, rows)
    return _store_orm(rows)


def _insert_many_postgres(events: list[Event]) -> None:
    # Column arrays and unnest(): three statements whatever the batch size (two without keys),
    # and none of the ORM's per-field preparation (most of a batch's CPU through bulk_create).
    claim_sql, records_sql, events_sql = dialect.events_insert_many_sql()
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
        keyed = [event for event in events if event.idempotency_key is not None]
        if keyed:
            cursor.execute(
                claim_sql,
                [
                    [getattr(event, name) for event in keyed]
                    for name in dialect.KEY_FROM_EVENT.values()
                ],
            )
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
        columns: list[list[Any]] = [[] for _ in dialect.EVENT_COLUMN_TYPES]
        for event in events:
            for column, name in zip(columns, dialect.EVENT_COLUMN_TYPES, strict=True):
                value = getattr(event, name)
                # jsonb columns: a value (`violations` may be None: SQL NULL, not JSON null).
                json_column = name in _JSON_COLUMNS and value is not None
                column.append(Jsonb(value) if json_column else value)
        cursor.execute(events_sql, columns)
        cursor.close()


_JSON_COLUMNS = frozenset(
    name for name, kind in dialect.EVENT_COLUMN_TYPES.items() if kind == "jsonb"
)


def events_insert_many(events: list[Event]) -> None:
    """Store several events of one organization with their idempotency keys, and touch their
    CRM records, in one transaction (callers have already settled idempotency keys; a race on
    one raises IntegrityError and stores nothing)."""
    if not events:
        return
    if dialect.postgres():
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
        # A key held already raises IntegrityError here, and the transaction stores nothing.
        IdempotencyKey.objects.bulk_create(
            [key_row(event) for event in events if event.idempotency_key is not None]
        )
        Event.objects.bulk_create(events)
