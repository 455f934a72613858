from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from django.db import connection, models
from django.db.models import Q

from events_app.ids import uuid7
from signals_app.models import Organization, Signal


class CrmRecord(models.Model):
    """The CRM object an event is about; created the first time an event names it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="records")
    type = models.CharField(max_length=64)
    external_id = models.CharField("external ID", max_length=255)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    # Time-decayed engagement, kept as a sum that needs no read-modify-write: each event adds
    # relevance * 2^((timestamp - ENGAGEMENT_EPOCH) / half_life), and a reader scales the sum
    # down to its own time. Addition commutes, so concurrent workers and out-of-order events
    # give the same total (events_app/pipeline/engagement.py). db_default: ingest's raw INSERT
    # does not name it.
    engagement_mass = models.FloatField(default=0.0, db_default=0.0)

    class Meta:
        verbose_name = "CRM record"
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "type", "external_id"], name="crm_record_unique_identity"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type}:{self.external_id}"


# How far in the future an event's `timestamp` may be when it is received (ingest refuses more):
# so received_at >= timestamp - MAX_FUTURE_SKEW for every stored event, a bound on received_at
# (the partition key) that the pipeline's counts by timestamp use to skip partitions.
MAX_FUTURE_SKEW = timedelta(hours=24)


class EventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class Event(models.Model):
    # UUIDv7: time-ordered, so inserts append to the primary-key index instead of scattering.
    id = models.UUIDField("ID", primary_key=True, default=uuid7, editable=False)
    # No single-column indexes on these two: they are the leading columns of
    # event_org_received and event_record_timestamp, and every index costs each insert.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    # No single-column index: event_signal_received below leads with it.
    signal = models.ForeignKey(
        Signal, on_delete=models.PROTECT, related_name="events", db_index=False
    )
    schema_version = models.PositiveIntegerField(null=True, blank=True)
    crm_record = models.ForeignKey(
        CrmRecord,
        on_delete=models.PROTECT,
        related_name="events",
        db_index=False,
        verbose_name="CRM record",
    )
    identity_type = models.CharField(max_length=64)
    identity_id = models.CharField("identity ID", max_length=255)
    data = models.JSONField(default=dict)
    timestamp = models.DateTimeField(help_text="When it happened: the timestamp the client sent.")
    received_at = models.DateTimeField()
    # NULL, not "", means "not sent": the API echoes null.
    reference = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # Shown with the event; not unique here: IdempotencyKey holds the promise (a partitioned
    # table cannot have a unique index without its partition key).
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # SHA-256 of the canonical request; an idempotent replay must match it.
    request_hash = models.CharField(max_length=64)
    status = models.CharField(
        max_length=12, choices=EventStatus.choices, default=EventStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # When the current claim was taken; the sweep returns a `processing` event whose claim is
    # older than the task time limit (its worker died) to `pending`.
    claimed_at = models.DateTimeField(null=True, blank=True)
    # For a `pending` event: not before this time may the sweep queue it again (set by retry
    # backoff and by the sweep itself, so a long backlog is not queued over and over).
    due_at = models.DateTimeField(null=True, blank=True)
    # What the first successful processing added to the CRM record's rollups (metric bucket
    # and value, state change, engagement weight). Written in the same transaction as the
    # rollups; reprocessing reuses it and never applies the rollups again.
    rollup = models.JSONField(null=True, blank=True)
    # False: accepted under the signal's `flag` enforcement although `data` failed its schema;
    # `violations` then holds the same `details` list a 400 would have carried.
    # db_default: adding the column to a large table is a catalogue change, not a rewrite.
    schema_valid = models.BooleanField("schema valid", default=True, db_default=True)
    violations = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=EventStatus.values), name="event_status_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-received_at"], name="event_org_received"),
            models.Index(fields=["status", "received_at"], name="event_status_received"),
            models.Index(fields=["crm_record", "-timestamp"], name="event_record_timestamp"),
            # The admin's per-signal "events in the last 24 h" and "last event" columns.
            models.Index(fields=["signal", "-received_at"], name="event_signal_received"),
            # GET /v1/events?schema_valid=false (and the admin's filter), in the list's order.
            # Partial: only flagged events are in it, so valid inserts never touch it, and a
            # page of the rare flagged events is not a walk past every valid one.
            models.Index(
                fields=["organization", "-received_at"],
                condition=Q(schema_valid=False),
                name="event_org_invalid_received",
            ),
        ]

    def __str__(self) -> str:
        return str(self.id)


class IdempotencyKey(models.Model):
    """An idempotency key used by an organization, and the event it stored: the one source of
    truth for "this key was used" (events_app/ingest/store.py).

    Everything a replay answers is here, so a replay is answered the same once retention has
    deleted the event (its status then reads `purged`). Kept at least as long as the events
    (BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS, events_app/retention.py), and never deleted while
    its event exists.
    """

    # Not a foreign key: the events table is partitioned on PostgreSQL and cannot be referred
    # to. The primary key: one key per event, and, the id being a UUIDv7 made when the event
    # was received, the retention purge's index by time (no second index on received_at for
    # every insert to keep up).
    event_id = models.UUIDField("event ID", primary_key=True)
    # No index of its own: the unique (organization, key) index leads with it. No database
    # constraint either: the row is written in the same statement as its event, whose own
    # foreign key checks the organization; a second check per key would only cost ingest.
    # Deleting an organization still deletes its keys (Django's cascade).
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        related_name="idempotency_keys",
        db_index=False,
        db_constraint=False,
    )
    key = models.CharField(max_length=255)
    # The event's own received_at: names the partition holding the event, and dates the key.
    received_at = models.DateTimeField()
    # What a replay needs: the request's fingerprint (a different request with the same key is
    # a conflict) and the accepted answer's fields that never change.
    request_hash = models.CharField(max_length=64)
    schema_version = models.PositiveIntegerField(null=True, blank=True)
    reference = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "key"], name="idempotency_key_unique_in_org"
            ),
        ]

    def __str__(self) -> str:
        return self.key


class MetricAggregate(models.Model):
    """One period bucket of a metric signal for one CRM record.

    All four statistics are kept whatever the signal's aggregation, so `avg` is sum/count and a
    change of aggregation in the admin needs no recomputation. Updated only by one atomic
    upsert per event (events_app/pipeline/rollups.py), never read-modify-write.
    """

    crm_record = models.ForeignKey(
        CrmRecord, on_delete=models.CASCADE, related_name="aggregates", verbose_name="CRM record"
    )
    signal = models.ForeignKey(Signal, on_delete=models.CASCADE, related_name="aggregates")
    period = models.CharField(max_length=10)
    bucket_start = models.DateTimeField(help_text="Start of the period, UTC.")
    count = models.BigIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["crm_record", "signal", "period", "bucket_start"],
                name="metric_aggregate_unique_bucket",
            ),
        ]
        indexes = [
            # The retention purge's range scan per period (events_app/retention.py). Updates of
            # a bucket change no indexed column, so they can stay HOT updates on PostgreSQL.
            models.Index(fields=["period", "bucket_start"], name="metric_aggregate_period_start"),
        ]

    def __str__(self) -> str:
        start = f"{self.bucket_start:%Y-%m-%d %H:%M}"
        return f"{self.crm_record_id}/{self.signal_id}/{self.period}/{start}"


class RecordState(models.Model):
    """The current state of one state signal for one CRM record: the newest event's data.

    "Newest" is by the event's own timestamp, ties broken by event id (UUIDv7), so the outcome
    does not depend on the order in which workers see the events.
    """

    crm_record = models.ForeignKey(
        CrmRecord, on_delete=models.CASCADE, related_name="states", verbose_name="CRM record"
    )
    signal = models.ForeignKey(Signal, on_delete=models.CASCADE, related_name="states")
    value = models.JSONField()
    timestamp = models.DateTimeField()
    # Not a foreign key: events may be purged by retention while the state stays.
    event_id = models.UUIDField("event ID")
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["crm_record", "signal"], name="record_state_unique_signal"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.crm_record_id}/{self.signal_id}"


class InsightKind(models.TextChoices):
    EVENT = "event", "Event"
    METRIC_UNUSUAL = "metric_unusual", "Unusual metric value"
    STATE_CHANGE = "state_change", "State change"


class Insight(models.Model):
    """What processing one event concluded for the sales team; at most one per event."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="insights", db_index=False
    )
    crm_record = models.ForeignKey(
        CrmRecord, on_delete=models.CASCADE, related_name="insights", verbose_name="CRM record"
    )
    signal = models.ForeignKey(Signal, on_delete=models.CASCADE, related_name="insights")
    # Unique: reprocessing replaces the insight instead of adding a second one. Not a foreign
    # key, so purging old events (retention) keeps their insights.
    event_id = models.UUIDField("event ID", unique=True)
    kind = models.CharField(max_length=20, choices=InsightKind.choices)
    summary = models.CharField(max_length=500)
    score = models.PositiveSmallIntegerField()
    next_action = models.CharField(max_length=500)
    reasons = models.JSONField(default=list)
    processor = models.CharField(max_length=100)
    processor_version = models.CharField(max_length=50)
    occurred_at = models.DateTimeField(help_text="The event's timestamp.")
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(score__gte=0) & Q(score__lte=100), name="insight_score_0_100"
            ),
        ]
        indexes = [
            models.Index(fields=["crm_record", "-occurred_at"], name="insight_record_occurred"),
            # The admin's insight list, scoped to one organization.
            models.Index(fields=["organization", "-occurred_at"], name="insight_org_occurred"),
        ]

    def __str__(self) -> str:
        return self.summary


class RejectionReason(models.TextChoices):
    """The stable `code` of the API error the client got."""

    SCHEMA_VALIDATION_FAILED = "schema_validation_failed", "Schema violation"
    SIGNAL_NOT_FOUND = "signal_not_found", "Unknown signal"


class RejectedEvent(models.Model):
    """A request refused for a schema violation or an unknown signal, kept so the client can see
    what it sent wrong and staff can replay it after a fix (events_app/ingest/rejections.py).

    At most BIGMIND_REJECTIONS_PER_MINUTE rows per organization and minute (the rest are only
    counted, in RejectionOverflow); rows older than BIGMIND_REJECTION_RETENTION_DAYS are purged.
    """

    # UUIDv7: time-ordered, so the purge walks the primary-key index by age and the list's
    # cursor uses the same (received_at, id) keyset as events.
    id = models.UUIDField("ID", primary_key=True, default=uuid7, editable=False)
    # Leading column of rejected_event_org_received: no index of its own.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="rejected_events", db_index=False
    )
    # Which key sent it. Not a cascade: keys are revoked, not deleted, but a row must not block it.
    api_key = models.ForeignKey(
        "signals_app.ApiKey",
        verbose_name="API key",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    # The slug as sent; an unknown signal has no row to point to.
    signal_slug = models.CharField(max_length=100)
    reason = models.CharField(max_length=32, choices=RejectionReason.choices)
    message = models.TextField(help_text="The exact error message the client got.")
    violations = models.JSONField(
        default=list, blank=True, help_text="The error details the client got (schema violations)."
    )
    body = models.TextField(
        blank=True, help_text="The request body (one batch item), cut at a UTF-8 boundary."
    )
    body_truncated = models.BooleanField(default=False)
    body_bytes = models.PositiveIntegerField(help_text="Size of the original body in bytes.")
    identity_type = models.CharField(max_length=64, blank=True)
    identity_id = models.CharField("identity ID", max_length=255, blank=True)
    received_at = models.DateTimeField()
    # Not a foreign key: the event may be purged by retention while the rejection is kept.
    replayed_event_id = models.UUIDField("replayed event ID", null=True, blank=True)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(reason__in=RejectionReason.values), name="rejected_event_reason_valid"
            ),
        ]
        indexes = [
            models.Index(
                fields=["organization", "-received_at"], name="rejected_event_org_received"
            ),
            # The retention purge's range scan (rows are capped, so the extra index is cheap).
            models.Index(fields=["received_at"], name="rejected_event_received"),
        ]

    def __str__(self) -> str:
        return f"{self.reason} {self.signal_slug} at {self.received_at:%Y-%m-%d %H:%M:%S}"


class RejectionOverflow(models.Model):
    """Rejections over the per-minute cap: counted per organization and minute, not stored."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    minute = models.DateTimeField(help_text="Start of the minute, UTC.")
    # Only ever changed by an F() increment (events_app/ingest/rejections.py).
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "minute"], name="rejection_overflow_unique_minute"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.minute:%Y-%m-%d %H:%M}: {self.count}"


class EventTransition(models.Model):
    """One step of an event's status history (the admin's event page shows them in order).

    Written by the pipeline in the same statement group as the change it records: the claim,
    completion, a retry, a failure, the sweep's return of a stuck event and reprocessing.
    Arrival (`pending` at received_at) is not written: the event row already says it.
    """

    # No database constraint: on PostgreSQL the events table is partitioned, its primary key
    # (id, received_at), and no key can point at `id` alone. The ORM's cascade stays, and
    # retention deletes a dropped partition's transitions with it (events_app/retention.py).
    event = models.ForeignKey(
        Event,
        on_delete=models.CASCADE,
        related_name="transitions",
        db_index=False,
        db_constraint=False,
    )
    status = models.CharField(max_length=12, choices=EventStatus.choices)
    attempt = models.PositiveIntegerField(default=0)
    at = models.DateTimeField()
    note = models.TextField(blank=True, help_text="The error or the reason, if any.")

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["event", "at"], name="event_transition_event_at")]

    def __str__(self) -> str:
        return f"{self.event_id} {self.status} at {self.at:%Y-%m-%d %H:%M:%S}"


class PurgedEventCount(models.Model):
    """Events of one CRM record and signal deleted by retention (events_app/retention.py).

    Added up in the transaction that deletes them, so the record profile's event counts and
    latest event times stay those of every event ever accepted, not only of those still kept.
    """

    crm_record = models.ForeignKey(
        CrmRecord,
        on_delete=models.CASCADE,
        related_name="purged_counts",
        db_index=False,
        verbose_name="CRM record",
    )
    signal = models.ForeignKey(Signal, on_delete=models.CASCADE, related_name="+")
    # Only ever changed by an atomic upsert that adds to it.
    count = models.BigIntegerField()
    last_event_at = models.DateTimeField(help_text="The latest timestamp of those events.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["crm_record", "signal"], name="purged_event_count_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.crm_record_id}/{self.signal_id}: {self.count}"


def db_value(model: type[models.Model], name: str, value: Any) -> Any:
    """`value` as the database driver wants it for `model.name`, for hand-written SQL."""
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field.get_db_prep_value(value, connection)


# --- Outbound webhooks (docs/webhooks.md; issue #14, in progress) ------------------------------
class WebhookEventType(models.TextChoices):
    EVENT_COMPLETED = "event.completed", "event.completed"
    EVENT_FAILED = "event.failed", "event.failed"
    INSIGHT_CREATED = "insight.created", "insight.created"
    STATE_CHANGED = "state.changed", "state.changed"
    PING = "ping", "ping"


class WebhookEndpoint(models.Model):
    """Where an organization wants what its pipeline learns pushed. The signing secret is kept
    encrypted (events_app/webhooks/secrets.py): it must be read to sign, and it is shown only in
    the answer that creates or rotates it."""

    public_id = models.CharField("ID", max_length=15, unique=True, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.CharField("URL", max_length=2048)
    description = models.CharField(max_length=500, blank=True)
    # The webhook event types it wants, or ["*"]; the signals it wants by id, or [] for all (ids,
    # not slugs: a slug can be edited, and another signal could take the old one).
    event_types = models.JSONField(default=list)
    signal_ids = models.JSONField("signal IDs", default=list, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True, editable=False)
    secret_encrypted = models.TextField(editable=False)
    # Secrets replaced by a rotation, each still signing until its own time, newest first:
    # [{"secret": <encrypted>, "expires_at": <ISO 8601>}]. Two rotations within a day keep
    # every secret a receiver may still hold.
    previous_secrets = models.JSONField(default=list, blank=True, editable=False)
    # The first failed delivery of the current unbroken run of failures; cleared by a success.
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return f"{self.public_id} {self.url}"


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One webhook event for one endpoint: the outbox row, written in the transaction of the
    pipeline step that causes it, then sent (and retried) by the `webhooks` queue. `body` holds
    the exact bytes every attempt sends (built at the first), so each retry carries the same id
    and content."""

    id = models.UUIDField("ID", primary_key=True, default=uuid7, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    # No database constraint: PostgreSQL checks Django's foreign keys at commit, so an endpoint
    # deleted while a completing transaction writes its deliveries would fail that commit, and
    # with it the events. The ORM still deletes an endpoint's deliveries with it; one written
    # meanwhile is left without its endpoint, and the sender drops it.
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_constraint=False,
    )
    type = models.CharField(max_length=32, choices=WebhookEventType.choices)
    # The event it is about (no foreign key: retention may purge the event before the last try).
    event_id = models.UUIDField("event ID", null=True, blank=True)
    # The event's received_at, which names its partition of the events table: the first attempt
    # reads the event by (id, received_at), visiting one partition instead of all. Empty on
    # deliveries written by an earlier release (their event is then read by id alone).
    event_received_at = models.DateTimeField(
        "event received at", null=True, blank=True, editable=False
    )
    # What the type adds beside the event (`insight`; `previous` and `state`), written with the
    # delivery; the body is built from it and the event at the first attempt, then kept, so
    # every attempt sends the same bytes (events_app/webhooks/sending.py, `bodies_build`).
    extra = models.JSONField(default=dict, blank=True, editable=False)
    body = models.TextField(blank=True, editable=False)
    status = models.CharField(
        max_length=16, choices=WebhookDeliveryStatus.choices, default=WebhookDeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set while a sender holds it: the fencing token of its attempt, like an event's claim.
    claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    response_excerpt = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_endpoint"),
            # A sender's claim, and the sweep's probe per endpoint: an endpoint's pending
            # deliveries, oldest due first ...
            models.Index(
                fields=["endpoint", "next_attempt_at"],
                name="webhook_delivery_endpoint_due",
                condition=Q(status="pending"),
            ),
            # ... and its count of the endpoint's live claims (only claimed rows are in it).
            models.Index(
                fields=["endpoint", "claimed_at"],
                name="webhook_delivery_claimed",
                condition=Q(claimed_at__isnull=False),
            ),
            # Retention's scan: finished deliveries, oldest first.
            models.Index(
                fields=["completed_at"],
                name="webhook_delivery_completed",
                condition=Q(completed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_event_id} {self.type}"

    @property
    def webhook_event_id(self) -> str:
        return webhook_event_id(self.id)


def webhook_event_id(delivery_id: UUID) -> str:
    """The `whevt_` id a delivery is sent under, on every attempt."""
    return f"whevt_{delivery_id.hex}"
