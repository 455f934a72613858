from __future__ import annotations

from django.db import models
from django.db.models import Q

from events_app.ids import uuid7
from signals_app.models import Organization, Signal


class CrmRecord(models.Model):
    """The CRM object an event is about; created the first time an event names it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="records")
    type = models.CharField(max_length=64)
    external_id = models.CharField(max_length=255)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()

    class Meta:
        verbose_name = "CRM record"
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "type", "external_id"], name="crm_record_unique_identity"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type}:{self.external_id}"


class EventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class Event(models.Model):
    # UUIDv7: time-ordered, so inserts append to the primary-key index instead of scattering.
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # No single-column indexes on these two: they are the leading columns of
    # event_org_received and event_record_timestamp, and every index costs each insert.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    signal = models.ForeignKey(Signal, on_delete=models.PROTECT, related_name="events")
    schema_version = models.PositiveIntegerField(null=True, blank=True)
    crm_record = models.ForeignKey(
        CrmRecord, on_delete=models.PROTECT, related_name="events", db_index=False
    )
    identity_type = models.CharField(max_length=64)
    identity_id = models.CharField(max_length=255)
    data = models.JSONField(default=dict)
    timestamp = models.DateTimeField(help_text="When it happened (client's `timestamp`).")
    received_at = models.DateTimeField()
    # NULL, not "", means "not sent": the API echoes null, and the partial unique index below
    # must skip events without a key.
    reference = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
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

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="event_idempotency_key_unique_in_org",
            ),
            models.CheckConstraint(
                condition=Q(status__in=EventStatus.values), name="event_status_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-received_at"], name="event_org_received"),
            models.Index(fields=["status", "received_at"], name="event_status_received"),
            models.Index(fields=["crm_record", "-timestamp"], name="event_record_timestamp"),
        ]

    def __str__(self) -> str:
        return str(self.id)
