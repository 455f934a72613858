"""Retention: deleting old events and metric buckets without changing what they added up to.

- **Completed events** received more than BIGMIND_EVENT_RETENTION_DAYS ago, and **failed**
  ones after BIGMIND_FAILED_EVENT_RETENTION_DAYS (never sooner than completed ones: a failed
  event is the only copy of what could not be processed, kept so it can be reprocessed once the
  cause is fixed). `pending` and `processing` events are never deleted, however old.
- **Metric buckets** whose whole period ended more than BIGMIND_METRIC_BUCKET_RETENTION_DAYS
  ago. A bucket is deleted whole or not at all, so newer buckets are never touched.
- **Webhook deliveries** finished (succeeded or failed) more than
  BIGMIND_WEBHOOK_DELIVERY_RETENTION_DAYS ago. Pending ones are never deleted: they are still
  owed to their endpoint.
- **Audit log entries** older than BIGMIND_AUDIT_RETENTION_DAYS (400 by default: regulated
  customers keep a year of changes, and then some).
- **Idempotency keys** received more than BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS ago (by default
  as long as failed events, never less: settings refuse a shorter value), and only once their
  event is gone: a key never outlives its own promise while the event can still be replayed
  (a `pending` event older than that keeps its key).
- **Rejected events** keep their own purge (events_app/ingest/rejections.py,
  `events.purge_rejections`); the `purge_expired` command runs it too.

0 days keeps that kind forever.

Deleting an event changes nothing it added up to: metric buckets, states and engagement are
sums and replacements already applied (`Event.rollup` recorded them); `RecordState.event_id`,
`Insight.event_id` and `RejectedEvent.replayed_event_id` are plain UUIDs, not foreign keys, so
a state, an insight or a replayed rejection outlives the event it names. Only the record's
event counts would shrink, so each chunk adds what it deletes to `PurgedEventCount`, in the same
transaction, and the profile adds those back. The status history (`EventTransition`) goes with
its event.

**Whole partitions** (PostgreSQL, where the events table is partitioned by received_at,
events_app/partitions): a partition whose whole range ended before the completed events' cutoff
is detached and dropped instead of deleted row by row, provided it holds no event that must be
kept (`pending` or `processing`, or `failed` while the failed events' cutoff has not passed its
end). First DETACH PARTITION, alone in its transaction (with the advisory lock of partition
upkeep): on PostgreSQL 15 it takes ACCESS EXCLUSIVE on the events table (a plain DETACH: the
CONCURRENTLY form is refused while a DEFAULT partition exists), a catalogue change held a
moment; it holds no other table lock while waiting, so it cannot deadlock with the writers, and
waits under a `lock_timeout` (PARTITION_LOCK_TIMEOUT) so that a long query holding the table
costs this run the partition (the next run tries again) rather than queueing every other query
behind the waiting lock. Then, on the detached table, which nothing reaches through the events
table any more: its events added to `PurgedEventCount` (one INSERT ... SELECT ... GROUP BY),
their transitions deleted, DROP TABLE; or ATTACH again if it holds an event to keep after all.
A drop interrupted between the two is finished by the next run. The partition straddling the
cutoff, the DEFAULT partition and any partition holding events that must be kept are purged
row by row as below.

Bounded: chunks of BIGMIND_RETENTION_CHUNK_SIZE rows, each one short transaction; on
PostgreSQL an event chunk is taken with `FOR UPDATE SKIP LOCKED`, so a purge never waits on (nor
deletes under) a reprocess or another purge holding the same rows. A run stops when its time
budget is spent and the next run carries on.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from bigmind.idempotency_settings import event_retention_days
from events_app import dialect
from events_app.ids import uuid7_floor
from events_app.models import (
    Event,
    EventStatus,
    EventTransition,
    IdempotencyKey,
    MetricAggregate,
    PurgedEventCount,
    WebhookDelivery,
    db_value,
)
from events_app.partitions.upkeep import (
    TABLE,
    is_partitioned,
    partitions_lock,
    partitions_read,
    timestamp_literal,
)
from events_app.pipeline.facts import bucket_start
from signals_app.models import AuditEntry

logger = logging.getLogger(__name__)

PERIODS = ("hour", "day", "week", "month")
# A chunk's statements carry up to 4 parameters per row: this keeps them far below the
# databases' limits (SQLite 32,766, PostgreSQL 65,535), and a chunk's transaction short.
MAX_CHUNK_SIZE = 5000
# How long dropping a partition waits for its locks before leaving it to the next run.
PARTITION_LOCK_TIMEOUT = "500ms"


@dataclass
class RetentionResult:
    completed_events: int = 0
    failed_events: int = 0
    metric_buckets: int = 0
    webhook_deliveries: int = 0
    audit_entries: int = 0
    idempotency_keys: int = 0
    chunks: int = 0
    # Partitions of the events table dropped whole (their events are counted above).
    dropped_partitions: list[str] = field(default_factory=list)
    # False when the time budget ran out with rows still to delete (the next run continues).
    finished: bool = True
    cutoffs: dict[str, datetime | None] = field(default_factory=dict)


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def retention_cutoffs(*, now: datetime) -> dict[str, datetime | None]:
    """Rows older than these are expired; None: kept forever."""
    completed_days = settings.BIGMIND_EVENT_RETENTION_DAYS
    # Forever if either says so, else never sooner than completed events: the rule the keys'
    # retention is checked against (bigmind.idempotency_settings), from the same function.
    failed_days = event_retention_days(
        completed=completed_days, failed=settings.BIGMIND_FAILED_EVENT_RETENTION_DAYS
    )
    return {
        EventStatus.COMPLETED: _cutoff(now, completed_days),
        EventStatus.FAILED: _cutoff(now, failed_days),
        "metric_buckets": _cutoff(now, settings.BIGMIND_METRIC_BUCKET_RETENTION_DAYS),
        "webhook_deliveries": _cutoff(now, settings.BIGMIND_WEBHOOK_DELIVERY_RETENTION_DAYS),
        "audit_entries": _cutoff(now, settings.BIGMIND_AUDIT_RETENTION_DAYS),
        "idempotency_keys": _cutoff(now, settings.BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS),
    }


def _tally_sql(rows: int) -> str:
    table = PurgedEventCount._meta.db_table
    _, greatest = dialect.least_greatest()
    values = ", ".join(["(%s, %s, %s, %s)"] * rows)
    # Only model metadata is interpolated; values go as parameters.
    return f"""
        INSERT INTO "{table}" ("crm_record_id", "signal_id", "count", "last_event_at")
        VALUES {values}
        ON CONFLICT ("crm_record_id", "signal_id") DO UPDATE SET
            "count" = "{table}"."count" + EXCLUDED."count",
            "last_event_at" = {greatest}("{table}"."last_event_at", EXCLUDED."last_event_at")
    """  # noqa: S608


def _tally_add(events: Iterable[tuple[Any, int, int, datetime]]) -> None:
    """Add deleted events to their record's counts: one upsert for the chunk, adding (F-style)."""
    tally: dict[tuple[int, int], list[Any]] = {}
    for _pk, crm_record_id, signal_id, timestamp in events:
        entry = tally.setdefault((crm_record_id, signal_id), [0, timestamp])
        entry[0] += 1
        entry[1] = max(entry[1], timestamp)
    if not tally:
        return
    params: list[Any] = []
    # Sorted: concurrent purges then lock the same rows in the same order (no deadlock).
    for (crm_record_id, signal_id), (count, last) in sorted(tally.items()):
        params += [
            crm_record_id,
            signal_id,
            count,
            db_value(PurgedEventCount, "last_event_at", last),
        ]
    with connection.cursor() as cursor:
        cursor.execute(_tally_sql(len(tally)), params)


def _events_chunk(status: str, cutoff: datetime, size: int) -> int:
    """Delete up to `size` expired events of `status`, oldest first; one short transaction."""
    with transaction.atomic():
        # The (status, received_at) index gives the oldest first; rows another transaction
        # holds (a reprocess moving them to `pending`) are skipped, and the status is checked
        # under our lock, so an event that left `status` meanwhile is not deleted.
        rows = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(status=status, received_at__lt=cutoff)
            .order_by("received_at")
            .values_list("pk", "crm_record_id", "signal_id", "timestamp")[:size]
        )
        if not rows:
            return 0
        _tally_add(rows)
        # `only`: the collector fetches ids, not payloads, before deleting the transitions
        # (cascade) and the events.
        Event.objects.filter(pk__in=[row[0] for row in rows]).only("pk").delete()
    return len(rows)


def _partition_drop_sql(partition: str) -> str:
    tally = PurgedEventCount._meta.db_table
    # Sorted by key, as _tally_add's upsert: concurrent purges lock the same rows in one order.
    # Only catalogue names are interpolated.
    return f"""
        WITH per AS (
            SELECT "crm_record_id", "signal_id", "status", count(*) AS n,
                   max("timestamp") AS last
            FROM "{partition}" GROUP BY 1, 2, 3
        ), tallied AS (
            INSERT INTO "{tally}" ("crm_record_id", "signal_id", "count", "last_event_at")
            SELECT "crm_record_id", "signal_id", sum(n), max(last) FROM per
            GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT ("crm_record_id", "signal_id") DO UPDATE SET
                "count" = "{tally}"."count" + EXCLUDED."count",
                "last_event_at" = GREATEST("{tally}"."last_event_at", EXCLUDED."last_event_at")
        )
        SELECT "status", sum(n)::bigint FROM per GROUP BY 1
    """  # noqa: S608


def _kept_statuses(end: datetime, failed_cutoff: datetime | None) -> list[str]:
    """The statuses of events a partition ending at `end` must not lose."""
    kept: list[str] = [EventStatus.PENDING, EventStatus.PROCESSING]
    if failed_cutoff is None or end > failed_cutoff:
        kept.append(EventStatus.FAILED)
    return kept


def _holds(cursor: CursorWrapper, table: str, kept: list[str]) -> bool:
    cursor.execute(
        f'SELECT EXISTS (SELECT 1 FROM "{table}" WHERE "status" = ANY(%s))',  # noqa: S608
        [kept],
    )
    return bool(cursor.fetchone()[0])


def _partition_drop(
    name: str, end: datetime, failed_cutoff: datetime | None, dry_run: bool
) -> dict[str, int] | None:
    """Drop one expired partition with what it adds up to; None when it holds events that must
    be kept (or the events table's lock was not free in time): the row purge then deals with it.

    DETACH first, in a transaction of its own that holds no other table lock while it waits
    (so it cannot be part of a deadlock with the writers, who lock the events table and then
    its partitions), under a short lock_timeout. Once detached, no statement through the
    events table reaches the partition: counting and dropping it then blocks nobody.
    """
    kept = _kept_statuses(end, failed_cutoff)
    with connection.cursor() as cursor:
        # A look without a lock: most partitions that must be kept are known here for free.
        if _holds(cursor, name, kept):
            return None
    if dry_run:
        return {}
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
            partitions_lock(cursor)
            cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{name}"')
    except OperationalError as exc:
        if "lock timeout" not in str(exc) and "deadlock" not in str(exc):
            raise
        logger.warning("retention: partition %s left to the next run (%s)", name, exc)
        return None
    return _detached_drop(name, kept)


def _detached_drop(name: str, kept: list[str]) -> dict[str, int] | None:
    """Count, clear and drop a detached expired partition, in one transaction; re-attach it
    instead if it holds an event that must be kept (a reprocess between the look and the
    DETACH). Also what finishes a drop a crash interrupted after the DETACH."""
    transitions = EventTransition._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        partitions_lock(cursor)
        if _holds(cursor, name, kept):
            start, end = _detached_range(name)
            cursor.execute(
                f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{name}" '
                f"FOR VALUES FROM ({timestamp_literal(start)}) TO ({timestamp_literal(end)})"
            )
            logger.warning("retention: partition %s holds events to keep; attached again", name)
            return None
        cursor.execute(_partition_drop_sql(name))
        counts = {status: int(n) for status, n in cursor.fetchall()}
        cursor.execute(
            f'DELETE FROM "{transitions}" t USING "{name}" e WHERE t."event_id" = e."id"'  # noqa: S608
        )
        # PostgreSQL refuses to drop a table with foreign-key checks still deferred in this
        # transaction; there are none unless the caller's own transaction wrote events (a
        # test does). Checked now instead; Django declares every foreign key DEFERRABLE
        # INITIALLY DEFERRED, so DEFERRED below restores the caller's state.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f'DROP TABLE "{name}"')
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    return counts


_DETACHED = re.compile(rf"^{TABLE}_p(\d{{8}})_(\d{{8}})$")


def _detached_range(name: str) -> tuple[datetime, datetime]:
    match = _DETACHED.match(name)
    assert match is not None, name
    return (
        datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC),
        datetime.strptime(match[2], "%Y%m%d").replace(tzinfo=UTC),
    )


def _detached_partitions(cursor: CursorWrapper) -> list[str]:
    """Partitions a drop detached and did not finish (the process died in between): plain
    tables named like a partition that are no partition of the events table."""
    cursor.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
        "AND relnamespace = to_regnamespace(current_schema()) AND relname LIKE %s",
        [f"{TABLE}_p%"],
    )
    return sorted(name for (name,) in cursor.fetchall() if _DETACHED.match(name))


def _partitions_purge(
    cutoffs: dict[str, datetime | None],
    result: RetentionResult,
    dry_run: bool,
    out_of_time: Callable[[], bool],
) -> None:
    completed_cutoff = cutoffs[EventStatus.COMPLETED]
    if completed_cutoff is None or not is_partitioned():
        return
    with connection.cursor() as cursor:
        expired = [
            p
            for p in partitions_read(cursor)
            if p.start is not None and p.end is not None and p.end <= completed_cutoff
        ]
        unfinished = [] if dry_run else _detached_partitions(cursor)
    for name in unfinished:
        _, end = _detached_range(name)
        counts = _detached_drop(name, _kept_statuses(end, cutoffs[EventStatus.FAILED]))
        if counts is not None:
            result.dropped_partitions.append(name)
            result.completed_events += counts.get(EventStatus.COMPLETED, 0)
            result.failed_events += counts.get(EventStatus.FAILED, 0)
    for part in expired:
        if out_of_time():
            return
        assert part.end is not None
        counts = _partition_drop(part.name, part.end, cutoffs[EventStatus.FAILED], dry_run)
        if counts is None:
            continue
        result.dropped_partitions.append(part.name)
        result.completed_events += counts.get(EventStatus.COMPLETED, 0)
        result.failed_events += counts.get(EventStatus.FAILED, 0)


def _buckets_chunk(period: str, before: datetime, size: int) -> int:
    # Nothing refers to a bucket, so this is one SELECT and one DELETE, each in autocommit.
    ids = list(
        MetricAggregate.objects.filter(period=period, bucket_start__lt=before)
        .order_by("bucket_start")
        .values_list("pk", flat=True)[:size]
    )
    if ids:
        MetricAggregate.objects.filter(pk__in=ids).delete()
    return len(ids)


def _deliveries_chunk(cutoff: datetime, size: int) -> int:
    # Finished deliveries only (completed_at is set when one succeeds or fails for good, and
    # cleared by a manual retry), through the partial index on completed_at.
    ids = list(
        WebhookDelivery.objects.filter(completed_at__lt=cutoff)
        .order_by("completed_at")
        .values_list("pk", flat=True)[:size]
    )
    if ids:
        WebhookDelivery.objects.filter(pk__in=ids, completed_at__lt=cutoff).delete()
    return len(ids)


def _audit_chunk(cutoff: datetime, size: int) -> int:
    # Nothing refers to an entry; oldest first through the index on the time.
    ids = list(
        AuditEntry.objects.filter(at__lt=cutoff).order_by("at").values_list("pk", flat=True)[:size]
    )
    if ids:
        AuditEntry.objects.filter(pk__in=ids).delete()
    return len(ids)


def _expired_keys(cutoff: datetime) -> QuerySet[IdempotencyKey]:
    # Along the primary key: event ids are UUIDv7s made when the event was received, so the
    # keys of events received before the cutoff are the ids below its first UUIDv7 (an index
    # range on every database, and no index on received_at for ingest to keep up). The event's
    # own received_at names its partition in the probe that the event is gone.
    event = Event.objects.filter(pk=OuterRef("event_id"), received_at=OuterRef("received_at"))
    return IdempotencyKey.objects.filter(
        event_id__lt=uuid7_floor(cutoff), received_at__lt=cutoff
    ).filter(~Exists(event))


def _keys_chunk(cutoff: datetime, size: int) -> int:
    # Nothing refers to a key. A concurrent request with a key being deleted waits for this
    # DELETE (the unique index), then stores its event anew: the key had expired.
    ids = list(_expired_keys(cutoff).order_by("event_id").values_list("event_id", flat=True)[:size])
    if ids:
        IdempotencyKey.objects.filter(pk__in=ids).delete()
    return len(ids)


def _bucket_boundaries(cutoff: datetime) -> dict[str, datetime]:
    """Per period, the start of the bucket holding `cutoff`: buckets starting before it ended
    by then (periods are contiguous), so they are wholly older than the cutoff."""
    return {period: bucket_start(cutoff, period) for period in PERIODS}


def retention_purge(
    *, now: datetime | None = None, time_budget: float | None = None, dry_run: bool = False
) -> RetentionResult:
    """Delete expired events and metric buckets, chunk by chunk (see the module docstring).

    `time_budget`: seconds after which no new chunk is started. `dry_run`: count, delete nothing.
    """
    now = now or timezone.now()
    cutoffs = retention_cutoffs(now=now)
    result = RetentionResult(cutoffs=cutoffs)
    size = min(max(1, settings.BIGMIND_RETENTION_CHUNK_SIZE), MAX_CHUNK_SIZE)
    deadline = time.monotonic() + time_budget if time_budget is not None else None

    def out_of_time() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            result.finished = False
            return True
        return False

    def in_chunks(chunk: Callable[[], int]) -> int:
        """Run `chunk` (it deletes up to `size` rows, returns how many) until one comes back
        short or the time budget is spent; how many it deleted in all."""
        deleted = 0
        while not out_of_time():
            done = chunk()
            deleted += done
            result.chunks += 1 if done else 0
            if done < size:
                break
        return deleted

    # Whole partitions first: the row purge below then finds only the straddling ones' rows.
    # (A dry run lists them; the counts below include their events already.)
    _partitions_purge(cutoffs, result, dry_run, out_of_time)
    for status in (EventStatus.COMPLETED, EventStatus.FAILED):
        cutoff = cutoffs[status]
        if cutoff is None:
            continue
        expired = Event.objects.filter(status=status, received_at__lt=cutoff)
        if dry_run:
            deleted = expired.count()
        else:
            deleted = in_chunks(partial(_events_chunk, status, cutoff, size))
        if status == EventStatus.COMPLETED:
            result.completed_events += deleted
        else:
            result.failed_events += deleted

    bucket_cutoff = cutoffs["metric_buckets"]
    if bucket_cutoff is not None:
        for period, before in _bucket_boundaries(bucket_cutoff).items():
            if dry_run:
                result.metric_buckets += MetricAggregate.objects.filter(
                    period=period, bucket_start__lt=before
                ).count()
                continue
            result.metric_buckets += in_chunks(partial(_buckets_chunk, period, before, size))

    delivery_cutoff = cutoffs["webhook_deliveries"]
    if delivery_cutoff is not None:
        if dry_run:
            result.webhook_deliveries = WebhookDelivery.objects.filter(
                completed_at__lt=delivery_cutoff
            ).count()
        else:
            result.webhook_deliveries += in_chunks(
                partial(_deliveries_chunk, delivery_cutoff, size)
            )

    audit_cutoff = cutoffs["audit_entries"]
    if audit_cutoff is not None:
        if dry_run:
            result.audit_entries = AuditEntry.objects.filter(at__lt=audit_cutoff).count()
        else:
            result.audit_entries += in_chunks(partial(_audit_chunk, audit_cutoff, size))

    # After the events: a key whose event this run deleted goes in the same run.
    key_cutoff = cutoffs["idempotency_keys"]
    if key_cutoff is not None:
        if dry_run:
            result.idempotency_keys = _expired_keys(key_cutoff).count()
        else:
            result.idempotency_keys += in_chunks(partial(_keys_chunk, key_cutoff, size))

    counts = (
        result.completed_events,
        result.failed_events,
        result.metric_buckets,
        result.webhook_deliveries,
        result.audit_entries,
        result.idempotency_keys,
    )
    if not dry_run and any(counts):
        logger.info(
            "retention purge: %d completed and %d failed event(s), %d metric bucket(s), "
            "%d webhook deliveries, %d audit log entries, %d idempotency keys deleted; "
            "%d event partition(s) dropped%s",
            *counts,
            len(result.dropped_partitions),
            "" if result.finished else " (time budget spent; the next run continues)",
        )
    return result
