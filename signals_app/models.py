from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Organization(models.Model):
    """A tenant: everything else belongs to exactly one organization."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class SignalType(models.TextChoices):
    EVENT = "event", "Event"
    METRIC = "metric", "Metric"
    STATE = "state", "State"


class Aggregation(models.TextChoices):
    SUM = "sum", "Sum"
    COUNT = "count", "Count"
    AVG = "avg", "Average"
    MIN = "min", "Minimum"
    MAX = "max", "Maximum"


class Period(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"
    WEEK = "week", "Week"
    MONTH = "month", "Month"


class Compatibility(models.TextChoices):
    NONE = "none", "None"
    BACKWARD = "backward", "Backward"
    FORWARD = "forward", "Forward"
    FULL = "full", "Full"


class Enforcement(models.TextChoices):
    """What happens to an event whose `data` fails its schema."""

    REJECT = "reject", "Reject (400)"
    FLAG = "flag", "Flag (accept, mark invalid)"


class Signal(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="signals")
    # `sig_` + 8 base62 characters; what the API shows as `signal_id`.
    public_id = models.CharField("signal ID", max_length=12, unique=True, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    type = models.CharField(max_length=10, choices=SignalType.choices)
    description = models.TextField(blank=True)
    ai_instructions = models.TextField(
        "AI instructions", blank=True, help_text="Free text telling the AI how to read this signal."
    )
    active = models.BooleanField(default=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Overrides the type's default budget (event 100, metric 1000, state 30).",
    )
    compatibility = models.CharField(
        max_length=10, choices=Compatibility.choices, default=Compatibility.NONE
    )
    # Metric signals only.
    aggregation = models.CharField(max_length=10, choices=Aggregation.choices, blank=True)
    period = models.CharField(max_length=10, choices=Period.choices, blank=True)
    value_field = models.CharField(
        max_length=100,
        blank=True,
        help_text="The property of the event's data that holds the number; value when left empty.",
    )
    enforcement = models.CharField(
        max_length=10,
        choices=Enforcement.choices,
        default=Enforcement.REJECT,
        help_text="Reject an event whose data fails the schema, or accept it flagged as invalid.",
    )
    # [{"path": "/email", "mode": "hash"}, ...]: JSON Pointers into `data`, applied before
    # anything is stored or logged (events_app/ingest/redaction.py).
    redact = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization", "slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "slug"], name="signal_slug_unique_in_org"
            ),
            models.CheckConstraint(
                condition=Q(type__in=SignalType.values),
                name="signal_type_valid",
                violation_error_message="Choose a signal type: event, metric or state.",
            ),
            models.CheckConstraint(
                condition=~Q(type=SignalType.METRIC)
                | (Q(aggregation__in=Aggregation.values) & Q(period__in=Period.values)),
                name="signal_metric_has_aggregation_and_period",
                violation_error_message="A metric signal needs an aggregation and a period.",
            ),
            models.CheckConstraint(
                condition=Q(rate_limit_per_minute__isnull=True) | Q(rate_limit_per_minute__gt=0),
                name="signal_rate_limit_positive",
                violation_error_message="The rate limit must be at least 1 per minute.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.slug}" if self.organization_id else self.slug


class SchemaVersion(models.Model):
    """A JSON Schema (draft 2020-12) for a signal's `data`. Immutable once created."""

    signal = models.ForeignKey(Signal, on_delete=models.CASCADE, related_name="schema_versions")
    version = models.PositiveIntegerField()
    schema = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["signal", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["signal", "version"], name="schema_version_unique"),
            models.CheckConstraint(
                condition=Q(version__gte=1),
                name="schema_version_positive",
                violation_error_message="Schema versions are numbered from 1.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.signal.slug} v{self.version}"


class ApiScope(models.TextChoices):
    EVENTS_WRITE = "events:write", "events:write (ingest, batch, validate)"
    EVENTS_READ = "events:read", "events:read"
    RECORDS_READ = "records:read", "records:read"
    SIGNALS_READ = "signals:read", "signals:read"
    REJECTIONS_READ = "rejections:read", "rejections:read"
    WEBHOOKS_WRITE = "webhooks:write", "webhooks:write"


def api_scopes_all() -> list[str]:
    """Every scope: what a key made without `--scopes` holds (and keys made before scopes)."""
    return list(ApiScope.values)


class ApiKey(models.Model):
    """An `sk_` key. Only its SHA-256 is stored, with a short prefix to recognise it by."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField("last used", null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField("revoked", null=True, blank=True, editable=False)
    # A list of ApiScope values. Stored explicitly (not "empty means all"), so that a key's
    # page shows exactly what it may do.
    scopes = models.JSONField(default=api_scopes_all)
    # Signal slugs the key may write and read; NULL: every signal of its organization.
    signals = models.JSONField("signal allow-list", null=True, blank=True)
    expires_at = models.DateTimeField("expires", null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        label = f"{self.prefix}…"
        return f"{label} ({self.name})" if self.name else label

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class OrganizationMembership(models.Model):
    """Limits a staff user to one organization in the admin (bigmind/admin_tenancy.py).

    A non-superuser staff user with a membership sees and changes only that organization's
    objects; one without a membership sees no organization's objects at all. Superusers see
    every organization, membership or not.
    """

    # One organization per user: "limited to one organization" is the whole model.
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="organization_membership"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization", "user"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization}"


class AuditActorKind(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "API key"
    COMMAND = "command", "Command"
    SYSTEM = "system", "System"


class AuditEntry(models.Model):
    """One change to the control plane (signals_app/audit.py): who, which organization, what,
    to which object, the fields changed (never a secret's value) and the request.

    The organization is kept as its id and slug, not a foreign key: the entry that records an
    organization's deletion, and every entry before it, must outlive the organization."""

    at = models.DateTimeField("time", default=timezone.now)
    actor_kind = models.CharField(max_length=10, choices=AuditActorKind.choices)
    # The username, the API key's prefix or the command's name; empty for the system.
    actor = models.CharField(max_length=150, blank=True)
    organization_pk = models.BigIntegerField("organization ID", null=True, blank=True)
    organization_slug = models.CharField("organization", max_length=64, blank=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField("object ID", max_length=64, blank=True)
    object_repr = models.CharField("object", max_length=200, blank=True)
    # {field: [old, new]}; a secret appears only as SECRET_MASK on both sides.
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField("request ID", max_length=128, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit log entries"
        indexes = [
            # The admin's list and `audit_log --organization`: one organization, by time.
            models.Index(fields=["organization_pk", "at"], name="audit_org_time"),
            # `--since`, the unscoped list, and the retention purge.
            models.Index(fields=["at"], name="audit_time"),
            models.Index(fields=["action", "at"], name="audit_action_time"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_repr}".strip()
