from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from bigmind.errors import ApplicationError
from signals_app import services
from signals_app.models import ApiKey, Organization, SchemaVersion, Signal
from signals_app.schemas import schema_check
from signals_app.services import SIGNAL_SETTINGS


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "created_at")
    search_fields = ("slug", "name")


class SchemaVersionInline(admin.TabularInline):
    """Versions are shown read-only; a new one is added through the blank row."""

    model = SchemaVersion
    extra = 0
    fields = ("version", "schema", "created_at")
    readonly_fields = ("version", "schema", "created_at")
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SignalForm(forms.ModelForm):
    slug = forms.SlugField(
        required=False, max_length=100, help_text="Made from the name when left empty."
    )
    new_schema = forms.JSONField(
        required=False,
        label="Add schema version",
        help_text="A JSON Schema (draft 2020-12) for `data`. Saved as the next version; "
        "existing versions never change.",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "style": "font-family: monospace"}),
    )

    class Meta:
        model = Signal
        fields = ("organization", "slug", *SIGNAL_SETTINGS)

    def clean(self) -> dict[str, Any]:
        # The services' own checks, run here so that a problem is a form error next to the
        # form rather than an exception at save time.
        cleaned = super().clean() or {}
        settings = {name: cleaned.get(name) for name in SIGNAL_SETTINGS if name in cleaned}
        if "type" not in settings:
            return cleaned  # the field's own error is shown already
        try:
            services.signal_settings_check(settings)
            if cleaned.get("slug"):
                services.signal_slug_check(cleaned["slug"])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        slug = cleaned.get("slug")
        if self.instance.pk and not slug:
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
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        return schema


@admin.register(Signal)
class SignalAdmin(admin.ModelAdmin):
    form = SignalForm
    list_display = ("slug", "name", "organization", "type", "active", "public_id")
    list_filter = ("type", "active", "organization")
    search_fields = ("slug", "name", "public_id")
    readonly_fields = ("public_id", "created_at", "updated_at")
    inlines = (SchemaVersionInline,)

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
                saved = services.signal_create(
                    organization=form.cleaned_data["organization"], slug=slug, **data
                )
            schema = form.cleaned_data.get("new_schema")
            if schema is not None:
                version = services.schema_version_create(signal=saved, schema=schema)
                messages.success(request, f"Added schema version {version.version}.")
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        obj.pk = saved.pk
        obj.__dict__.update(saved.__dict__)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "organization", "created_at", "last_used_at", "revoked_at")
    list_filter = ("organization", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("prefix", "name")
    fields = ("organization", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_keys",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "organization") if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            ApiKey.objects.filter(pk=obj.pk).update(name=obj.name)
            return
        api_key, raw = services.api_key_create(organization=obj.organization, name=obj.name)
        obj.pk = api_key.pk
        obj.__dict__.update(api_key.__dict__)
        # Kept on the request only, so the response can show it once; never in the session,
        # a message or a log.
        request._bigmind_new_key = raw  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: Any = None
    ) -> HttpResponse:
        raw = getattr(request, "_bigmind_new_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "api_key": obj,
            "raw_key": raw,
            "opts": self.model._meta,
        }
        response = TemplateResponse(request, "admin/signals_app/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            count += 1
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead, so last_used and history stay
