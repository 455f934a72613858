"""The API key admin: a new key shown once, revocation (a page, a confirmation, an action)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.timezone import now
from django.utils.translation import ngettext

from bigmind.admin_once import ShownOnce
from bigmind.admin_tenancy import OrganizationScopedAdmin
from bigmind.display import datetime_display
from bigmind.errors import ApplicationError
from signals_app import services
from signals_app.admin.display import SIGNALS_ADMIN_CSS, clipped
from signals_app.models import ApiKey, ApiScope


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


def _slugs(text: str) -> list[str] | None:
    """The allow-list field: comma- or space-separated slugs; blank is None (every signal)."""
    slugs = [part for part in text.replace(",", " ").split() if part]
    return slugs or None


class ApiKeyAddForm(forms.ModelForm):
    """A new key's name and limits, checked by the service's own rules before it is made."""

    scope_choices = forms.MultipleChoiceField(
        label="Scopes",
        choices=ApiScope.choices,
        initial=list(ApiScope.values),
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do. All of them: full access to the organization's data.",
        error_messages={"required": "Choose at least one scope."},
    )
    signal_allow_list = forms.CharField(
        label="Signal allow-list",
        required=False,
        help_text=(
            "Slugs of the organization's signals, separated by commas: the key may write and "
            "read only their events. Blank: every signal."
        ),
    )

    class Meta:
        model = ApiKey
        fields = ("organization", "name", "expires_at")
        help_texts = {"expires_at": "Blank: the key never expires. Times are UTC."}

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        organization = data.get("organization")
        if organization is None or "scope_choices" not in data:
            return data  # the field's own error is shown
        try:
            self.limits = services.api_key_limits_check(
                organization=organization,
                scopes=data["scope_choices"],
                signals=_slugs(data.get("signal_allow_list") or ""),
                expires_at=data.get("expires_at"),
            )
        except ApplicationError as exc:
            raise ValidationError(exc.message) from exc
        return data


# A key created but not yet shown waits for the page the add form redirects to, split in two
# between the session and a cookie for that page only (bigmind/admin_once.py).
NEW_API_KEYS = ShownOnce(session_key="bigmind_new_api_keys", cookie="bigmind_new_api_key_pad")


@admin.register(ApiKey)
class ApiKeyAdmin(OrganizationScopedAdmin):
    list_display = (
        "prefix",
        "short_name",
        "organization",
        "status",
        "scope_list",
        "created_at",
        "last_used_at",
    )
    list_filter = ("organization", ApiKeyStatusFilter)
    search_fields = ("prefix", "name")
    # A key's limits are fixed when it is made (a key with other limits is a new key): the
    # change page shows them read-only, and only the name can be edited.
    fields = (
        "organization",
        "name",
        "prefix",
        "scope_list",
        "signal_list",
        "expires_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    add_fields = ("organization", "name", "scope_choices", "signal_allow_list", "expires_at")
    readonly_fields = (
        "prefix",
        "scope_list",
        "signal_list",
        "expires_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    actions = ("revoke_keys",)

    class Media:
        css = SIGNALS_ADMIN_CSS

    @admin.display(description="Name", ordering="name")
    def short_name(self, obj: ApiKey) -> str:
        return clipped(obj.name)

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiKey) -> str:
        scopes = list(obj.scopes or ())
        if set(scopes) >= set(ApiScope.values):
            return "All"
        return clipped(", ".join(scopes) or "None", 40)

    @admin.display(description="Signal allow-list")
    def signal_list(self, obj: ApiKey) -> str:
        if obj.signals is None:
            return "Every signal"
        return ", ".join(obj.signals)

    @admin.display(description="Status", ordering="revoked_at")
    def status(self, obj: ApiKey) -> str:
        if obj.expires_at is not None and obj.revoked_at is None and obj.expires_at <= now():
            return format_html(
                '<span title="Expired {}">Expired</span>', datetime_display(obj.expires_at)
            )
        if obj.revoked_at is None and obj.expires_at is not None:
            # The day only: the list must fit the window; the exact time is on hover.
            return format_html(
                '<span title="Active, expires {}">Expires {}</span>',
                datetime_display(obj.expires_at),
                obj.expires_at.date().isoformat(),
            )
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

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields if obj else self.add_fields

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return (*self.readonly_fields, "organization")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            services.api_key_update(api_key=obj, name=obj.name)
            return
        organization = self.scoped_organization(request, obj.organization)
        limits = form.limits
        api_key, raw = services.api_key_create(
            organization=organization,
            name=obj.name,
            scopes=limits.scopes,
            signals=limits.signals,
            expires_at=limits.expires_at,
        )
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
        # again (a second key). The key waits for that one page (NEW_API_KEYS); never in a
        # message, a URL or a log.
        response = HttpResponseRedirect(reverse("admin:signals_app_apikey_created", args=[obj.pk]))
        NEW_API_KEYS.hold(request, response, key=str(obj.pk), raw=raw)
        return response

    def created_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The new key, shown once; shown again (a reload, the back button) it is gone."""
        api_key = self.get_object(request, unquote(object_id))
        if not self.has_view_permission(request, api_key):
            raise PermissionDenied
        raw = NEW_API_KEYS.take(request, key=str(api_key.pk))
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
        NEW_API_KEYS.forget_pad(request, response)
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
