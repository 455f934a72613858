"""The webhook endpoints' admin: created and changed through the endpoint services
(webhook_forms), the signing secret shown once on creation and on rotation, a test event sent.
Their deliveries are in webhook_deliveries. Both are cut to the user's organization like every
organization-owned admin (bigmind/admin_tenancy.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from bigmind.admin_once import ShownOnce
from bigmind.admin_tenancy import OrganizationScopedAdmin
from bigmind.display import datetime_display, short_id_text
from events_app.admin.display import cut_cell, time_field
from events_app.admin.webhook_forms import WebhookEndpointForm
from events_app.models import (
    WebhookEndpoint,
)
from events_app.webhooks.endpoints import endpoint_delete, endpoint_rotate_secret, signal_slugs
from events_app.webhooks.sending import (
    EndpointDisabled,
    ping_create,
)

ADMIN_CSS = {"all": ("events_app/admin.css",)}
# A new or rotated secret waits for the one page that shows it (bigmind/admin_once.py).
NEW_SECRETS = ShownOnce(
    session_key="bigmind_new_webhook_secrets", cookie="bigmind_new_webhook_secret_pad"
)
# Past this many selected, the list actions stop: each one writes and queues.
ACTION_MAX = 100


def confirmation_page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    title: str,
    explanation: str,
    objects: list[Any],
    cancel_url: str,
    button: str,
) -> TemplateResponse:
    """A page asking to confirm a POST (the buttons on an object's page lead here)."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "subtitle": None,
        "opts": model_admin.opts,
        "explanation": explanation,
        "objects": objects,
        "cancel_url": cancel_url,
        "button": button,
    }
    return TemplateResponse(request, "admin/events_app/webhook_confirmation.html", context)


def confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get("post") == "yes"


# --- Endpoints ---------------------------------------------------------------------------------
@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(OrganizationScopedAdmin):
    form = WebhookEndpointForm
    # Every list fits 1400 px with the sidebar and the filter open (events_app/admin/display.py,
    # "List columns"): the disabled reason is in the "enabled" cell, and the creation time on
    # the ID's hover and the endpoint's page.
    list_display = (
        "ref_endpoint",
        "organization_column",
        "url_column",
        "events_column",
        "enabled_column",
        "when_failing_since",
    )
    list_display_links = ("ref_endpoint",)
    list_filter = ("organization", "enabled")
    list_select_related = ("organization",)
    search_fields = ("=public_id", "url")
    actions = ("send_test_events",)

    class Media:
        css = ADMIN_CSS

    failing_since_field = time_field("failing_since", "failing since (every delivery failed)")
    created = time_field("created_at", "created")
    updated = time_field("updated_at", "updated")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            fields = ("organization", "url", "events", "signals", "description", "enabled")
            return ((None, {"fields": fields}),)
        return (
            (
                None,
                {
                    "fields": (
                        "public_id",
                        "organization",
                        "url",
                        "events",
                        "signals",
                        "description",
                        "enabled",
                    )
                },
            ),
            ("Health", {"fields": ("disabled_reason", "failing_since_field")}),
            ("Times (UTC)", {"fields": ("created", "updated")}),
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return (
            "public_id",
            "organization",
            "disabled_reason",
            "failing_since_field",
            "created",
            "updated",
        )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        # A class of this request's own (the form offers the user's organizations' signals);
        # never an attribute set on the shared class, which another request would see.
        return type(form.__name__, (form,), {"request": request})

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # Saved already, through endpoint_create / endpoint_update, as the form was validated
        # (WebhookEndpointForm._post_clean), in this request's transaction: a forged
        # organization is refused here and the transaction is rolled back with it.
        self.scoped_organization(request, obj.organization)
        if not change:
            request._bigmind_new_webhook_secret = form.secret  # type: ignore[attr-defined]

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        endpoint_delete(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        # One by one through the service (not Django's bulk delete): each is audited.
        for endpoint in queryset.select_related("organization"):
            endpoint_delete(endpoint)

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: Any = None
    ) -> HttpResponse:
        secret = getattr(request, "_bigmind_new_webhook_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        return self._show_secret(obj, secret, request=request, kind="created")

    def _show_secret(
        self, endpoint: WebhookEndpoint, secret: str, *, request: HttpRequest, kind: str
    ) -> HttpResponse:
        # POST/redirect/GET: reloading the page that shows the secret posts nothing again.
        url = reverse(f"admin:events_app_webhookendpoint_{kind}", args=[endpoint.pk])
        response = HttpResponseRedirect(url)
        NEW_SECRETS.hold(request, response, key=str(endpoint.pk), raw=secret)
        return response

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view

        def secret_page(kind: str) -> Callable[..., HttpResponse]:
            return lambda request, object_id: self.secret_view(request, object_id, kind=kind)

        return [
            path(
                "<path:object_id>/created/",
                view(secret_page("created")),
                name="events_app_webhookendpoint_created",
            ),
            path(
                "<path:object_id>/rotated/",
                view(secret_page("rotated")),
                name="events_app_webhookendpoint_rotated",
            ),
            path(
                "<path:object_id>/rotate-secret/",
                view(self.rotate_view),
                name="events_app_webhookendpoint_rotate",
            ),
            path(
                "<path:object_id>/test/",
                view(self.test_view),
                name="events_app_webhookendpoint_test",
            ),
            *super().get_urls(),
        ]

    def secret_view(self, request: HttpRequest, object_id: str, *, kind: str) -> HttpResponse:
        """The secret, shown once; shown again (a reload, the back button) it is gone."""
        endpoint = self.get_object(request, unquote(object_id))
        if not self.has_view_permission(request, endpoint):
            raise PermissionDenied
        secret = NEW_SECRETS.take(request, key=str(endpoint.pk))
        title = {"created": "Webhook endpoint created", "rotated": "Signing secret rotated"}
        context = {
            **self.admin_site.each_context(request),
            "title": title[kind] if secret else "Signing secret",
            "subtitle": None,
            "endpoint": endpoint,
            "secret": secret,
            "rotated": kind == "rotated",
            "opts": self.opts,
        }
        response = TemplateResponse(
            request, "admin/events_app/webhookendpoint/secret.html", context
        )
        NEW_SECRETS.forget_pad(request, response)
        return response

    def rotate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The "Rotate secret" button: a confirmation, then the new secret shown once."""
        endpoint = self.get_object(request, unquote(object_id))
        if not self.has_change_permission(request, endpoint):
            raise PermissionDenied
        if confirmed(request):
            rotated = endpoint_rotate_secret(endpoint)
            self.log_change(request, endpoint, "Rotated the signing secret.")
            return self._show_secret(endpoint, rotated.secret, request=request, kind="rotated")
        return confirmation_page(
            self,
            request,
            title="Rotate this endpoint's signing secret?",
            explanation="A new secret is made and shown once. The current one keeps signing "
            "beside it for 24 hours, so the receiver can switch without missing a delivery.",
            objects=[endpoint],
            cancel_url=reverse("admin:events_app_webhookendpoint_change", args=[endpoint.pk]),
            button="Yes, rotate the secret",
        )

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The "Send test event" button: a confirmation, then a `ping` delivery."""
        endpoint = self.get_object(request, unquote(object_id))
        if not self.has_change_permission(request, endpoint):
            raise PermissionDenied
        change_url = reverse("admin:events_app_webhookendpoint_change", args=[endpoint.pk])
        if confirmed(request):
            self._ping(request, endpoint)
            return HttpResponseRedirect(change_url)
        return confirmation_page(
            self,
            request,
            title="Send a test event to this endpoint?",
            explanation="A ping is sent through the webhooks queue, signed like any delivery; "
            "its delivery page shows the answer.",
            objects=[endpoint],
            cancel_url=change_url,
            button="Yes, send a ping",
        )

    def _ping(self, request: HttpRequest, endpoint: WebhookEndpoint) -> None:
        try:
            delivery = ping_create(endpoint=endpoint)
        except EndpointDisabled as refused:
            self.message_user(
                request, f"{endpoint.public_id}: {refused.message}.", messages.WARNING
            )
            return
        url = reverse("admin:events_app_webhookdelivery_change", args=[delivery.pk])
        self.message_user(
            request,
            format_html(
                '{}: test event <a href="{}">{}</a> queued.',
                endpoint.public_id,
                url,
                delivery.webhook_event_id,
            ),
            messages.SUCCESS,
        )

    # "change", as the buttons: sending is for staff who may change endpoints.
    @admin.action(description="Send a test event to selected endpoints", permissions=["change"])
    def send_test_events(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        selected = list(queryset.select_related("organization")[: ACTION_MAX + 1])
        if len(selected) > ACTION_MAX:
            self.message_user(
                request,
                f"Only the first {ACTION_MAX} selected endpoints were sent one.",
                messages.WARNING,
            )
        for endpoint in selected[:ACTION_MAX]:
            self._ping(request, endpoint)

    # For staff who may only view endpoints: the page shows these read-only, and the form's
    # fields of the same names are not there to show them.
    @admin.display(description="events")
    def events(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types)

    @admin.display(description="signals")
    def signals(self, obj: WebhookEndpoint) -> str:
        return ", ".join(signal_slugs(obj)) or "All"

    @admin.display(description="ID", ordering="public_id")
    def ref_endpoint(self, obj: WebhookEndpoint) -> SafeString:
        return format_html(
            '<span class="bigmind-id" title="{}, created {}">{}</span>',
            obj.public_id,
            datetime_display(obj.created_at),
            short_id_text(obj.public_id),
        )

    @admin.display(description="organization", ordering="organization__slug")
    def organization_column(self, obj: WebhookEndpoint) -> SafeString:
        return cut_cell(obj.organization.slug)

    @admin.display(description="URL", ordering="url")
    def url_column(self, obj: WebhookEndpoint) -> SafeString:
        return cut_cell(
            obj.url, title=f"{obj.url}\n\n{obj.description}" if obj.description else None
        )

    @admin.display(description="events")
    def events_column(self, obj: WebhookEndpoint) -> SafeString:
        return cut_cell(", ".join(obj.event_types))

    @admin.display(description="enabled", ordering="enabled")
    def enabled_column(self, obj: WebhookEndpoint) -> SafeString:
        if obj.enabled:
            return cut_cell("Yes")
        return cut_cell(f"No: {obj.disabled_reason}" if obj.disabled_reason else "No")

    @admin.display(description="failing since", ordering="failing_since")
    def when_failing_since(self, obj: WebhookEndpoint) -> str:
        return datetime_display(obj.failing_since)
