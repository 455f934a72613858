"""The signal admin: the list, the change form with its schema versions, and the "try a
payload" and schema diff pages. The list's events columns are the events app's to add
(events_app/admin/signals.py subclasses `SignalAdmin` and registers it in this one's place): the
control plane imports nothing of the data plane."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from bigmind.admin_tenancy import OrganizationScopedAdmin, admin_scope_filter
from bigmind.errors import ApplicationError
from signals_app import schemas, services
from signals_app.admin.display import SIGNALS_ADMIN_CSS, clipped
from signals_app.admin.forms import SignalForm, TryPayloadForm
from signals_app.models import SchemaVersion, Signal
from signals_app.services import SIGNAL_SETTINGS


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
    # (cut short), no signal ID (on the signal's page, and searchable). events_app's subclass
    # adds its two columns after latest_schema.
    list_display: tuple[str, ...] = ("signal", "organization", "type", "latest_schema", "active")
    list_display_links = ("signal",)
    list_filter = ("type", "active", "organization")
    list_select_related = ("organization",)
    search_fields = ("slug", "name", "public_id")
    # The page count needs no COUNT(*) over the whole table on every page.
    show_full_result_count = False
    readonly_fields: ClassVar[tuple[str, ...]] = (
        "public_id",
        "created_at",
        "updated_at",
        "latest_schema",
    )
    # The change page's "Activity" section (then created_at and updated_at).
    activity_fields: ClassVar[tuple[str, ...]] = ("public_id", "latest_schema")
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
        (
            "Governance",
            {
                "fields": ("enforcement", "redact"),
                "description": "Redaction rules are JSON Pointers into <code>data</code>, "
                'e.g. <code>[{"path": "/email", "mode": "hash"}, '
                '{"path": "/card/number", "mode": "drop"}]</code>. They apply to events '
                "received after the change; validation still sees the original data.",
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
        return (
            *self.fieldsets,
            ("Activity", {"fields": (*self.activity_fields, "created_at", "updated_at")}),
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Signal]:
        # One query for the whole page: each computed column is a correlated subquery.
        latest = SchemaVersion.objects.filter(signal=OuterRef("pk")).order_by("-version")
        return (
            super()
            .get_queryset(request)
            .annotate(latest_version_number=Subquery(latest.values("version")[:1]))
        )

    @admin.display(description="Signal", ordering="slug")
    def signal(self, obj: Signal) -> str:
        return format_html(
            '{}<span class="bigmind-quiet">{}</span>', obj.slug, clipped(obj.name, 80)
        )

    @admin.display(description="Latest schema", ordering="latest_version_number")
    def latest_schema(self, obj: Signal) -> str | None:
        number = getattr(obj, "latest_version_number", None)
        return f"v{number}" if number else None

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
