"""Rollups of the CRM record: written only inside the transaction that completes an event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction

from events_app.models import MetricAggregate, RecordState, db_value


@cache
def _metric_upsert_sql(vendor: str) -> str:
    table = MetricAggregate._meta.db_table
    # Same statement on both databases but for the two-argument min/max function's name.
    least, greatest = ("LEAST", "GREATEST") if vendor == "postgresql" else ("MIN", "MAX")
    # Only model metadata is interpolated; values go as parameters.
    return f"""
        INSERT INTO "{table}" ("crm_record_id", "signal_id", "period", "bucket_start",
                               "count", "sum", "min", "max", "updated_at")
        VALUES (%s, %s, %s, %s, 1, %s, %s, %s, %s)
        ON CONFLICT ("crm_record_id", "signal_id", "period", "bucket_start") DO UPDATE SET
            "count" = "{table}"."count" + 1,
            "sum" = "{table}"."sum" + EXCLUDED."sum",
            "min" = {least}("{table}"."min", EXCLUDED."min"),
            "max" = {greatest}("{table}"."max", EXCLUDED."max"),
            "updated_at" = EXCLUDED."updated_at"
    """  # noqa: S608


def metric_aggregate_add(
    *,
    crm_record_id: int,
    signal_id: int,
    period: str,
    bucket: datetime,
    value: float,
    now: datetime,
) -> None:
    """Add one value to its bucket: one atomic upsert, so concurrent workers never lose one."""
    params = [
        crm_record_id,
        signal_id,
        period,
        db_value(MetricAggregate, "bucket_start", bucket),
        value,
        value,
        value,
        db_value(MetricAggregate, "updated_at", now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_metric_upsert_sql(connection.vendor), params)


@dataclass(frozen=True)
class StateOutcome:
    newer: bool
    previous: Any  # the state's data before this event; None if there was none
    current: Any  # this event's data

    @property
    def changed(self) -> bool:
        return self.newer and self.previous != self.current


def record_state_apply(
    *,
    crm_record_id: int,
    signal_id: int,
    event_id: UUID,
    timestamp: datetime,
    value: Any,
    now: datetime,
) -> StateOutcome:
    """Make this event's data the current state if it is newer than the stored one.

    The row is locked (SELECT ... FOR UPDATE) for the rest of the caller's transaction, so the
    comparison and the replacement cannot interleave with another worker's; a first state is
    inserted under the unique constraint, and losing that race means comparing with the winner.
    """
    assert transaction.get_connection().in_atomic_block
    rows = RecordState.objects.select_for_update().filter(
        crm_record_id=crm_record_id, signal_id=signal_id
    )
    state = rows.first()
    if state is None:
        try:
            with transaction.atomic():
                RecordState.objects.create(
                    crm_record_id=crm_record_id,
                    signal_id=signal_id,
                    value=value,
                    timestamp=timestamp,
                    event_id=event_id,
                    updated_at=now,
                )
            return StateOutcome(newer=True, previous=None, current=value)
        except IntegrityError:
            state = rows.get()
    if (timestamp, event_id) <= (state.timestamp, state.event_id):
        return StateOutcome(newer=False, previous=state.value, current=value)
    rows.filter(pk=state.pk).update(
        value=value, timestamp=timestamp, event_id=event_id, updated_at=now
    )
    return StateOutcome(newer=True, previous=state.value, current=value)
