from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import IntegerField, OuterRef, QuerySet, Subquery
from django.forms.fields import InvalidJSONInput
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import ngettext

from bigmind.display import datetime_display
from bigmind.errors import ApplicationError
from bigmind.json_path import detail_line
from events_app.models import Event
from signals_app import schemas, services
from signals_app.models import (
    ApiKey,
    Organization,
    OrganizationMembership,
    SchemaVersion,
    Signal,
    SignalType,
)
from signals_app.schemas import schema_check
from signals_app.services import SIGNAL_SETTINGS


# --- Organization scoping ---------------------------------------------------------------------
@dataclass(frozen=True)
class AdminScope:
    """The organizations a staff user reaches in the admin (docs/operations.md, "Staff and
    organizations"): superusers every one; other staff only their membership's organization,
    and none at all without a membership."""

    everything: bool
    organization_id: int | None = None

    @property
    def restricted(self) -> bool:
        return not self.everything


_SCOPE_ATTRIBUTE = "_bigmind_admin_scope"


def admin_scope(request: HttpRequest) -> AdminScope:
    """The request user's scope; one query per request at most (kept on the request)."""
    scope: AdminScope | None = getattr(request, _SCOPE_ATTRIBUTE, None)
    if scope is not None:
        return scope
    user = request.user
    if user.is_active and user.is_superuser:
        scope = AdminScope(everything=True)
    else:
        organization_id = None
        if user.is_authenticated:
            organization_id = (
                OrganizationMembership.objects.filter(user_id=user.pk)
                .values_list("organization_id", flat=True)
                .first()
            )
        scope = AdminScope(everything=False, organization_id=organization_id)
    setattr(request, _SCOPE_ATTRIBUTE, scope)
    return scope


_ModelT = TypeVar("_ModelT", bound=models.Model)


def admin_scope_filter(
    queryset: QuerySet[_ModelT], *, request: HttpRequest, lookup: str
) -> QuerySet[_ModelT]:
    """`queryset` cut to the user's organization; `lookup` leads from its model to the
    organization's id (`organization`, `signal__organization`, `pk` for Organization itself)."""
    scope = admin_scope(request)
    if scope.everything:
        return queryset
    if scope.organization_id is None:
        return queryset.none()
    return queryset.filter(**{lookup: scope.organization_id})


def admin_organizations(request: HttpRequest) -> QuerySet[Organization]:
    """The organizations the user may see (the dashboard's chooser and pages use it too)."""
    return admin_scope_filter(Organization.objects.all(), request=request, lookup="pk")


# Tried in order on a model's own foreign keys to find its way to the organization.
_ORGANIZATION_PATHS = (
    "organization",
    "signal__organization",
    "crm_record__organization",
    "event__organization",
)


def organization_lookup_of(model: type[models.Model]) -> str | None:
    if model is Organization:
        return "pk"
    own = {field.name for field in model._meta.fields}
    return next((p for p in _ORGANIZATION_PATHS if p.split("__")[0] in own), None)


class OrganizationScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin for an organization-owned model, cut to the user's AdminScope.

    Lists, change pages, actions, history and deletes all read `get_queryset`, so an object of
    another organization is simply not there: its pages answer 404 (like a missing one), and a
    forged action selection drops it. Foreign-key choices in forms are cut the same way, so a
    scoped user cannot pick (nor post) another organization or its signals.
    """

    # From the model to the organization's id.
    organization_lookup = "organization"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return admin_scope_filter(
            super().get_queryset(request), request=request, lookup=self.organization_lookup
        )

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Django would redirect to the index saying it does not exist; a plain 404 is the
            # same answer for a missing object and another organization's.
            raise Http404(f"No {self.opts.verbose_name} with this id")
        return obj

    def get_list_filter(self, request: HttpRequest) -> Any:
        filters = super().get_list_filter(request)
        if admin_scope(request).everything:
            return filters
        # Django's organization filter lists every organization, whatever the queryset.
        return tuple(f for f in filters if f != "organization")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        scope = admin_scope(request)
        lookup = organization_lookup_of(db_field.related_model)
        if scope.restricted and lookup is not None and "queryset" not in kwargs:
            related = db_field.related_model._default_manager.all()
            kwargs["queryset"] = admin_scope_filter(related, request=request, lookup=lookup)
            if db_field.related_model is Organization:
                kwargs["empty_label"] = None  # their one organization, preselected
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        scope = admin_scope(request)
        if scope.restricted and scope.organization_id is None:
            return False  # nothing they add could belong to an organization they may see
        return super().has_add_permission(request, *args)

    def scoped_organization(self, request: HttpRequest, chosen: Organization) -> Organization:
        """The organization a new object goes to: the chosen one, which for a scoped user can
        only be their own (the form offers nothing else; this holds even if it did)."""
        scope = admin_scope(request)
        if scope.restricted and chosen.pk != scope.organization_id:
            raise PermissionDenied
        return chosen


def _clipped(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters for a list column, the whole of it on hover: a 200-
    character name would otherwise make its column, and the list, wider than the window."""
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: limit - 1].rstrip())


# The signals app's own CSS: lists that fit the window with the sidebar open, schema panes.
# Only on this app's admins (the events app's admins subclass OrganizationScopedAdmin too).
SIGNALS_ADMIN_CSS = {"all": ("signals_app/admin.css",)}


@admin.register(Organization)
class OrganizationAdmin(OrganizationScopedAdmin):
    list_display = ("slug", "short_name", "created_at")

    class Media:
        css = SIGNALS_ADMIN_CSS

    search_fields = ("slug", "name")
    organization_lookup = "pk"

    @admin.display(description="Name", ordering="name")
    def short_name(self, obj: Organization) -> str:
        return _clipped(obj.name)

    # Scoped staff see their own organization, read-only; only superusers add or change them.
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return admin_scope(request).everything and super().has_add_permission(request, *args)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin_scope(request).everything and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin_scope(request).everything and super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # The service `create_organization` uses; the form has checked the slug is free.
        try:
            created, _ = services.organization_get_or_create(slug=obj.slug, name=obj.name)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        obj.pk = created.pk
        obj.__dict__.update(created.__dict__)


@admin.register(OrganizationMembership)
class OrganizationMembershipAdmin(admin.ModelAdmin):
    """Who is limited to which organization. Superusers only: a membership is a permission."""

    list_display = ("user", "organization", "created_at")
    list_select_related = ("user", "organization")
    list_filter = ("organization",)
    search_fields = ("user__username", "user__email", "organization__slug")
    raw_id_fields = ("user",)

    class Media:
        css = SIGNALS_ADMIN_CSS

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)


class SchemaVersionInline(admin.TabularInline):
    """Versions are shown read-only; a new one is added through the blank row."""

    model = SchemaVersion
    extra = 0
    fields = ("version", "schema_json", "created_at", "tools")
    readonly_fields = ("version", "schema_json", "created_at", "tools")
    can_delete = False
    show_change_link = False
    ordering = ("-version",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Schema")
    def schema_json(self, obj: SchemaVersion) -> str:
        return format_html(
            '<pre class="bigmind-schema">{}</pre>',
            json.dumps(obj.schema, indent=2, ensure_ascii=False),
        )

    @admin.display(description="")
    def tools(self, obj: SchemaVersion) -> str:
        if obj.pk is None:
            return ""
        signal_id = obj.signal_id
        try_url = reverse("admin:signals_app_signal_try", args=[signal_id])
        diff_url = reverse("admin:signals_app_signal_diff", args=[signal_id, obj.version])
        return format_html(
            '<a href="{}?version={}">Try a payload</a> &middot; <a href="{}">Diff</a>',
            try_url,
            obj.version,
            diff_url,
        )


# Larger schemas are refused before parsing: a schema is read by every validator compile
# and shown on admin pages. Depth is bounded so parsing and checking cannot recurse away.
SCHEMA_MAX_BYTES = 256 * 1024
SCHEMA_MAX_DEPTH = 64


def _schema_tree_problem(root: Any) -> str | None:
    # Iterative, like bigmind.strict_json: a recursive walk is what this guards against.
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list) and depth > SCHEMA_MAX_DEPTH:
            return f"The schema is nested deeper than {SCHEMA_MAX_DEPTH} levels."
        if isinstance(node, dict):
            stack.extend((key, depth) for key in node)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, str) and "\x00" in node:
            # PostgreSQL's jsonb cannot store it; refusing here beats a failed save.
            return "The schema contains a NUL character (\\u0000), which cannot be stored."
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


class SchemaJSONField(forms.JSONField):
    """JSON text of a schema: size-capped, strict (no NaN, finite numbers), bounded depth, and
    a form error (never a crash) for anything Python's parser or jsonb cannot take."""

    def to_python(self, value: Any) -> Any:
        if not isinstance(value, str) or value in self.empty_values:
            return super().to_python(value)
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > SCHEMA_MAX_BYTES:
            raise ValidationError(
                f"The schema is {size / 1024:,.0f} KB; at most {SCHEMA_MAX_BYTES // 1024} KB "
                "is accepted.",
                code="too_large",
            )
        try:
            parsed = json.loads(value, parse_constant=_reject_constant, parse_float=_finite_float)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"Enter a valid JSON. {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                code="invalid",
            ) from exc
        except RecursionError as exc:
            raise ValidationError(
                f"The schema is nested deeper than {SCHEMA_MAX_DEPTH} levels.", code="too_deep"
            ) from exc
        except ValueError as exc:  # NaN/Infinity, an overflowing number, a 5,000-digit integer
            raise ValidationError(f"Enter a valid JSON. {exc}.", code="invalid") from exc
        problem = _schema_tree_problem(parsed)
        if problem:
            raise ValidationError(problem, code="invalid")
        return parsed

    def prepare_value(self, value: Any) -> Any:
        # No schema is an empty box, not the JSON text "null" (forms.JSONField's rendering of
        # None), which would be saved as a schema if the form were posted as shown.
        if value is None:
            return ""
        return super().prepare_value(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        # A refused form shows the schema exactly as typed (indentation included), and never
        # re-parses what to_python turned into an error.
        if self.disabled:
            return initial
        if data is None:
            return None
        return InvalidJSONInput(data)


class SignalForm(forms.ModelForm):
    slug = forms.SlugField(
        required=False, max_length=100, help_text="Made from the name when left empty."
    )
    new_schema = SchemaJSONField(
        required=False,
        label="Add schema version",
        help_text="A JSON Schema (draft 2020-12) for the events' <code>data</code>. Saved as the "
        "next version; existing versions never change.",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "style": "font-family: monospace"}),
    )

    class Meta:
        model = Signal
        fields = ("organization", "slug", *SIGNAL_SETTINGS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The model field is a PositiveIntegerField (0 allowed); the service and the database
        # want at least 1. Checked on the field, so the error is shown beside it.
        limit = self.fields.get("rate_limit_per_minute")
        if isinstance(limit, forms.IntegerField):
            limit.min_value = 1
            limit.validators.append(MinValueValidator(1))
            limit.widget.attrs["min"] = "1"

    def clean(self) -> dict[str, Any]:
        # The services' own checks, run here so that a problem is a form error next to the
        # form rather than an exception at save time. A problem with one field is put on that
        # field: ModelForm then also leaves out the database constraints on it
        # (signal_metric_has_aggregation_and_period...), whose messages would repeat it at the
        # top of the form.
        cleaned = super().clean() or {}
        if cleaned.get("type") == SignalType.METRIC:
            missing = {
                "aggregation": "A metric signal needs an aggregation.",
                "period": "A metric signal needs a period.",
            }
            for name, message in missing.items():
                if not cleaned.get(name) and not self.has_error(name):
                    self.add_error(name, message)
        elif cleaned.get("type"):
            # admin.js disables these for other types; a form posted without it still says where.
            for name in ("aggregation", "period", "value_field"):
                if cleaned.get(name):
                    self.add_error(name, "Applies to metric signals only.")
        settings = {name: cleaned.get(name) for name in SIGNAL_SETTINGS if name in cleaned}
        if "type" not in settings:
            return cleaned  # the field's own error is shown already
        if not any(self.has_error(name) for name in SIGNAL_SETTINGS):
            try:
                services.signal_settings_check(settings)
            except ApplicationError as exc:
                raise forms.ValidationError(exc.message) from exc
        if cleaned.get("slug"):
            try:
                services.signal_slug_check(cleaned["slug"])
            except ApplicationError as exc:
                # Django's SlugField lets uppercase through; the service does not.
                self.add_error("slug", exc.message)
                return cleaned
        slug = cleaned.get("slug")
        if self.instance.pk and not slug and not self.has_error("slug"):
            self.add_error("slug", "A signal's slug cannot be emptied; clients send it.")
        # On the change form the organization is read-only, so Django's own unique check
        # does not run: check the slug against the instance's organization here.
        organization = (
            self.instance.organization if self.instance.pk else cleaned.get("organization")
        )
        if slug and organization is not None:
            taken = Signal.objects.filter(organization=organization, slug=slug).exclude(
                pk=self.instance.pk
            )
            if taken.exists():
                self.add_error("slug", f"A signal with slug {slug!r} exists already")
        return cleaned

    def clean_new_schema(self) -> Any:
        schema = self.cleaned_data.get("new_schema")
        if schema in (None, ""):
            return None
        try:
            schema_check(schema)
            if self.instance.pk:
                # The mode this form saves is the one in force when the version is added.
                services.schema_version_compatibility_check(
                    signal=self.instance,
                    schema=schema,
                    compatibility=self.cleaned_data.get("compatibility"),
                )
        except ApplicationError as exc:
            reasons = [detail_line(d) for d in exc.details or [] if isinstance(d, dict)]
            raise forms.ValidationError([exc.message, *reasons]) from exc
        return schema


class TryPayloadForm(forms.Form):
    version = forms.TypedChoiceField(coerce=int, label="Schema version")
    payload = forms.CharField(
        label="Sample data",
        strip=False,
        max_length=settings.BIGMIND_EVENT_MAX_BODY_BYTES,
        help_text="The event's <code>data</code> object, as JSON.",
        widget=forms.Textarea(
            attrs={"rows": 14, "cols": 80, "style": "font-family: monospace", "spellcheck": "false"}
        ),
    )

    def __init__(self, *args: Any, versions: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["version"].choices = [  # type: ignore[attr-defined]
            (n, f"v{n} (latest)" if n == versions[0] else f"v{n}") for n in versions
        ]


# Events in the last 24 h are counted up to this many: the list stays one bounded index scan
# per signal however busy a signal is.
RECENT_EVENTS_CAP = 10_000


class _CappedCount(Subquery):
    template = "(SELECT COUNT(*) FROM (%(subquery)s) AS capped)"


def _diff_line_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "header"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "")


@admin.register(Signal)
class SignalAdmin(OrganizationScopedAdmin):
    form = SignalForm
    # Chosen to fit 1400 px with the sidebar and the filters open: the name under the slug
    # (cut short), no signal ID (on the signal's page, and searchable).
    list_display = (
        "signal",
        "organization",
        "type",
        "latest_schema",
        "events_24h",
        "last_event",
        "active",
    )
    list_display_links = ("signal",)
    list_filter = ("type", "active", "organization")
    list_select_related = ("organization",)
    search_fields = ("slug", "name", "public_id")
    # The page count needs no COUNT(*) over the whole table on every page.
    show_full_result_count = False
    readonly_fields = (
        "public_id",
        "created_at",
        "updated_at",
        "latest_schema",
        "events_24h",
        "last_event",
    )
    prepopulated_fields = {"slug": ("name",)}
    fieldsets = (
        (None, {"fields": ("organization", "name", "slug", "type", "active")}),
        (
            "Metric settings",
            {
                "fields": ("aggregation", "period", "value_field"),
                # admin.js hides this unless the type is metric.
                "classes": ("bigmind-metric-only",),
                "description": "Metric signals only: how the number in <code>data</code> "
                "is aggregated per period.",
            },
        ),
        (
            "Processing and ingestion",
            {
                "fields": (
                    "description",
                    "ai_instructions",
                    "rate_limit_per_minute",
                    "compatibility",
                )
            },
        ),
        # After compatibility: clean_new_schema reads the compatibility being saved.
        ("Schema", {"fields": ("new_schema",)}),
    )
    inlines = (SchemaVersionInline,)

    class Media:
        js = ("signals_app/admin.js",)
        css = SIGNALS_ADMIN_CSS

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return self.fieldsets
        activity = ("public_id", "latest_schema", "events_24h", "last_event")
        return (
            *self.fieldsets,
            ("Activity", {"fields": (*activity, "created_at", "updated_at")}),
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Signal]:
        # One query for the whole page: each column is a correlated subquery answered from
        # the events' (signal, received_at) index, never a join-and-group over the events
        # table. Not filtered by organization as well: that lets the planner walk
        # event_org_received newest first for a quiet signal, through all of a busy
        # organization's events. Ordered as that index is, so that even the capped count
        # reads it rather than scanning the table.
        since = timezone.now() - timedelta(hours=24)
        events = Event.objects.filter(signal=OuterRef("pk")).order_by("-received_at")
        latest = SchemaVersion.objects.filter(signal=OuterRef("pk")).order_by("-version")
        return (
            super()
            .get_queryset(request)
            .annotate(
                latest_version_number=Subquery(latest.values("version")[:1]),
                recent_event_count=_CappedCount(
                    events.filter(received_at__gte=since).values("pk")[: RECENT_EVENTS_CAP + 1],
                    output_field=IntegerField(),
                ),
                last_event_received_at=Subquery(events.values("received_at")[:1]),
            )
        )

    @admin.display(description="Signal", ordering="slug")
    def signal(self, obj: Signal) -> str:
        return format_html(
            '{}<span class="bigmind-quiet">{}</span>', obj.slug, _clipped(obj.name, 80)
        )

    @admin.display(description="Latest schema", ordering="latest_version_number")
    def latest_schema(self, obj: Signal) -> str | None:
        number = getattr(obj, "latest_version_number", None)
        return f"v{number}" if number else None

    @admin.display(description="Events (24 h)")
    def events_24h(self, obj: Signal) -> str | None:
        count = getattr(obj, "recent_event_count", None)
        if count is None:
            return None
        return f"{RECENT_EVENTS_CAP:,}+" if count > RECENT_EVENTS_CAP else f"{count:,}"

    @admin.display(description="Last event", ordering="last_event_received_at")
    def last_event(self, obj: Signal) -> str | None:
        # Written here rather than left to Django: a read-only field shows a method's value
        # with str(), which for a datetime is 2026-12-02 20:00:36.339410+00:00.
        received_at = getattr(obj, "last_event_received_at", None)
        return datetime_display(received_at) if received_at else None

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/try/",
                view(self.try_payload_view),
                name="signals_app_signal_try",
            ),
            path(
                "<path:object_id>/versions/<int:version>/diff/",
                view(self.schema_diff_view),
                name="signals_app_signal_diff",
            ),
            *super().get_urls(),
        ]

    def _signal_for_view(self, request: HttpRequest, object_id: str) -> Signal:
        signal: Signal | None
        signals = admin_scope_filter(
            Signal.objects.select_related("organization"),
            request=request,
            lookup=self.organization_lookup,
        )
        try:
            signal = signals.filter(pk=unquote(object_id)).first()
        except (ValueError, ValidationError):
            signal = None
        if signal is None:
            raise Http404("No such signal")
        if not self.has_view_permission(request, signal):
            raise PermissionDenied
        return signal

    def _page_context(self, request: HttpRequest, signal: Signal, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": self.opts,
            "original": signal,
            "has_view_permission": True,
        }

    def try_payload_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Check sample data against any version of the signal's schema; stores nothing."""
        signal = self._signal_for_view(request, object_id)
        versions = list(
            signal.schema_versions.order_by("-version").values_list("version", flat=True)
        )
        form = None
        result = None
        if versions:
            requested = request.GET.get("version", "")
            ok = requested.isascii() and requested.isdigit() and len(requested) <= 10
            chosen = int(requested) if ok else None
            form = TryPayloadForm(
                request.POST if request.method == "POST" else None,
                versions=versions,
                initial={"version": chosen if chosen in versions else versions[0]},
            )
            if request.method == "POST" and form.is_valid():
                number = form.cleaned_data["version"]
                version = signal.schema_versions.get(version=number)
                valid, violations = schemas.payload_try(
                    schema=version.schema, payload_text=form.cleaned_data["payload"]
                )
                result = {"valid": valid, "violations": violations, "version": number}
        context = {
            **self._page_context(request, signal, f"Try a payload: {signal.slug}"),
            "form": form,
            "result": result,
            "versions": versions,
        }
        return TemplateResponse(request, "admin/signals_app/signal/try_payload.html", context)

    def schema_diff_view(self, request: HttpRequest, object_id: str, version: int) -> HttpResponse:
        """Version `version` of the schema against the one before it (v1 against nothing)."""
        signal = self._signal_for_view(request, object_id)
        current = signal.schema_versions.filter(version=version).first()
        if current is None:
            raise Http404(f"{signal.slug} has no schema version {version}")
        previous = signal.schema_versions.filter(version__lt=version).order_by("-version").first()
        diff = schemas.schema_diff(
            old=previous.schema if previous else None,
            new=current.schema,
            old_label=f"version {previous.version}" if previous else "",
            new_label=f"version {version}",
        )
        versions = list(
            signal.schema_versions.order_by("version").values_list("version", flat=True)
        )
        later = [n for n in versions if n > version]
        context = {
            **self._page_context(request, signal, f"Schema {signal.slug} v{version}"),
            "version": current,
            "previous": previous,
            "next_version": later[0] if later else None,
            "versions": versions,
            "lines": [(_diff_line_class(line), line) for line in diff.splitlines()],
        }
        return TemplateResponse(request, "admin/signals_app/signal/schema_diff.html", context)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Events keep their signal; deactivate a signal instead (clients then get 404).
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # Moving a signal to another organization would hand its events to another tenant.
        return (*self.readonly_fields, "organization") if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Signal, form: Any, change: bool) -> None:
        # All writes go through the services, which check the settings and invalidate caches.
        data = {k: v for k, v in form.cleaned_data.items() if k in (*SIGNAL_SETTINGS, "slug")}
        try:
            if change:
                saved = services.signal_update(signal=obj, **data)
            else:
                slug = data.pop("slug", None) or None
                organization = self.scoped_organization(request, form.cleaned_data["organization"])
                saved = services.signal_create(organization=organization, slug=slug, **data)
            schema = form.cleaned_data.get("new_schema")
            if schema is not None:
                version = services.schema_version_create(signal=saved, schema=schema)
                messages.success(request, f"Added schema version {version.version}.")
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        obj.pk = saved.pk
        obj.__dict__.update(saved.__dict__)


class ApiKeyStatusFilter(admin.SimpleListFilter):
    """Active or revoked, rather than Django's "By revoked: Empty / Not empty"."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


# A key created but not yet shown is split in two between the add form's POST and the page it
# redirects to: the key XORed with a one-time pad in the session ({api key pk: sealed}), and the
# pad in a cookie only that page receives. Neither half alone tells anything of the key, so the
# database (where sessions are) never holds it, even if the page is never visited. The page
# takes both out as it shows the key.
NEW_API_KEYS_SESSION_KEY = "bigmind_new_api_keys"
NEW_API_KEY_PAD_COOKIE = "bigmind_new_api_key_pad"
NEW_API_KEY_PAD_MAX_AGE = 10 * 60


def _seal(raw: str) -> tuple[str, str]:
    """(sealed, pad): `raw` XOR a random pad of its length, and the pad, both base64."""
    data = raw.encode("utf-8")
    pad = secrets.token_bytes(len(data))
    sealed = bytes(a ^ b for a, b in zip(data, pad, strict=True))
    return base64.urlsafe_b64encode(sealed).decode(), base64.urlsafe_b64encode(pad).decode()


def _unseal(sealed: str, pad: str) -> str | None:
    try:
        data = base64.urlsafe_b64decode(sealed)
        key = base64.urlsafe_b64decode(pad)
    except (binascii.Error, ValueError):
        return None
    if len(data) != len(key):
        return None
    try:
        return bytes(a ^ b for a, b in zip(data, key, strict=True)).decode("utf-8")
    except UnicodeDecodeError:
        return None


@admin.register(ApiKey)
class ApiKeyAdmin(OrganizationScopedAdmin):
    list_display = ("prefix", "short_name", "organization", "status", "created_at", "last_used_at")
    list_filter = ("organization", ApiKeyStatusFilter)
    search_fields = ("prefix", "name")
    fields = ("organization", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_keys",)

    class Media:
        css = SIGNALS_ADMIN_CSS

    @admin.display(description="Name", ordering="name")
    def short_name(self, obj: ApiKey) -> str:
        return _clipped(obj.name)

    @admin.display(description="Status", ordering="revoked_at")
    def status(self, obj: ApiKey) -> str:
        if obj.revoked_at is None:
            return "Active"
        return format_html(
            '<span title="Revoked {}">Revoked</span>', datetime_display(obj.revoked_at)
        )

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/created/",
                view(self.created_view),
                name="signals_app_apikey_created",
            ),
            path(
                "<path:object_id>/revoke/",
                view(self.revoke_view),
                name="signals_app_apikey_revoke",
            ),
            *super().get_urls(),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "organization") if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            ApiKey.objects.filter(pk=obj.pk).update(name=obj.name)
            return
        organization = self.scoped_organization(request, obj.organization)
        api_key, raw = services.api_key_create(organization=organization, name=obj.name)
        obj.pk = api_key.pk
        obj.__dict__.update(api_key.__dict__)
        request._bigmind_new_key = raw  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: Any = None
    ) -> HttpResponse:
        raw = getattr(request, "_bigmind_new_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        # POST/redirect/GET: a reload of the page that shows the key must not post the form
        # again (a second key). The key waits for that one page sealed in the session, its pad
        # in a cookie for that page only (NEW_API_KEYS_SESSION_KEY); never in a message, a URL
        # or a log.
        sealed, pad = _seal(raw)
        pending = dict(request.session.get(NEW_API_KEYS_SESSION_KEY) or {})
        pending[str(obj.pk)] = sealed
        request.session[NEW_API_KEYS_SESSION_KEY] = pending
        url = reverse("admin:signals_app_apikey_created", args=[obj.pk])
        response = HttpResponseRedirect(url)
        response.set_cookie(
            NEW_API_KEY_PAD_COOKIE,
            pad,
            max_age=NEW_API_KEY_PAD_MAX_AGE,
            path=url,
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite="Strict",
        )
        return response

    def created_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The new key, shown once; shown again (a reload, the back button) it is gone."""
        api_key = self.get_object(request, unquote(object_id))
        if not self.has_view_permission(request, api_key):
            raise PermissionDenied
        pending = dict(request.session.get(NEW_API_KEYS_SESSION_KEY) or {})
        sealed = pending.pop(str(api_key.pk), None)
        pad = request.COOKIES.get(NEW_API_KEY_PAD_COOKIE)
        raw = _unseal(sealed, pad) if sealed and pad else None
        if sealed is not None:
            if pending:
                request.session[NEW_API_KEYS_SESSION_KEY] = pending
            else:
                del request.session[NEW_API_KEYS_SESSION_KEY]
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created" if raw else "API key",
            "subtitle": None,
            "api_key": api_key,
            "raw_key": raw,
            "opts": self.opts,
            "has_change_permission": self.has_change_permission(request, api_key),
        }
        response = TemplateResponse(request, "admin/signals_app/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        if pad is not None:
            response.delete_cookie(NEW_API_KEY_PAD_COOKIE, path=request.path, samesite="Strict")
        return response

    def revoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's Revoke button: a confirmation page, and the revocation on its POST."""
        api_key = self.get_object(request, unquote(object_id))
        if not self.has_change_permission(request, api_key):
            raise PermissionDenied
        change_url = reverse("admin:signals_app_apikey_change", args=[api_key.pk])
        if request.method == "POST" and request.POST.get("post") == "yes":
            if api_key.revoked_at is None:
                services.api_key_revoke(api_key=api_key)
                self.log_change(request, api_key, "Revoked.")
                self.message_user(request, f"Revoked the API key {api_key}.", messages.SUCCESS)
            else:
                self.message_user(request, f"The API key {api_key} was revoked already.")
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": "Revoke this API key?",
            "subtitle": None,
            "opts": self.opts,
            "api_keys": [api_key] if api_key.revoked_at is None else [],
            "single": api_key,
            "cancel_url": change_url,
        }
        return TemplateResponse(
            request, "admin/signals_app/apikey/revoke_confirmation.html", context
        )

    # "change", as the Revoke button: without it anyone who may only view keys could revoke them.
    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        # Like Django's delete_selected: a page listing the keys first, and the revocation
        # only when that page's form comes back with post=yes. `queryset` is already cut to
        # the user's organization, so a forged selection cannot reach another's keys.
        if request.POST.get("post") != "yes":
            api_keys = list(queryset.select_related("organization").order_by("-created_at"))
            context = {
                **self.admin_site.each_context(request),
                "title": ngettext("Revoke this API key?", "Revoke these API keys?", len(api_keys)),
                "subtitle": None,
                "opts": self.opts,
                "api_keys": api_keys,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "cancel_url": reverse("admin:signals_app_apikey_changelist"),
            }
            return TemplateResponse(
                request, "admin/signals_app/apikey/revoke_confirmation.html", context
            )
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            self.log_change(request, api_key, "Revoked.")
            count += 1
        message = ngettext("Revoked %(count)d API key.", "Revoked %(count)d API keys.", count)
        self.message_user(request, message % {"count": count}, messages.SUCCESS)
        return None

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead, so last_used and history stay
