"""The webhooks admin: endpoints (created and changed through the endpoint services, the signing
secret shown once on creation and on rotation, a test event sent) and their deliveries
(read-only: the request as sent and the response excerpt; retried). Both are cut to the user's
organization like every organization-owned admin (bigmind/admin_tenancy.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from bigmind.admin_once import ShownOnce
from bigmind.admin_tenancy import OrganizationScopedAdmin, admin_scope_filter
from bigmind.display import datetime_display, short_id, short_id_text
from events_app.admin.display import cut_cell, time_field
from events_app.admin.webhook_forms import WebhookEndpointForm
from events_app.models import (
    Event,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)
from events_app.webhooks.endpoints import endpoint_rotate_secret
from events_app.webhooks.sending import (
    ID_HEADER,
    USER_AGENT,
    EndpointDisabled,
    delivery_retry,
    ping_create,
)
from events_app.webhooks.signing import HEADER as SIGNATURE_HEADER

ADMIN_CSS = {"all": ("events_app/admin.css",)}
# A new or rotated secret waits for the one page that shows it (bigmind/admin_once.py).
NEW_SECRETS = ShownOnce(
    session_key="bigmind_new_webhook_secrets", cookie="bigmind_new_webhook_secret_pad"
)
# Past this many selected, the list actions stop: each one writes and queues.
ACTION_MAX = 100


def _confirmation(
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


def _confirmed(request: HttpRequest) -> bool:
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
        if _confirmed(request):
            rotated = endpoint_rotate_secret(endpoint)
            self.log_change(request, endpoint, "Rotated the signing secret.")
            return self._show_secret(endpoint, rotated.secret, request=request, kind="rotated")
        return _confirmation(
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
        if _confirmed(request):
            self._ping(request, endpoint)
            return HttpResponseRedirect(change_url)
        return _confirmation(
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


# --- Deliveries --------------------------------------------------------------------------------
class DeliveryEndpointFilter(admin.SimpleListFilter):
    """The endpoints of the organizations in view (Django's own filter would list every
    organization's)."""

    title = "endpoint"
    parameter_name = "endpoint"
    limit = 100

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        endpoints = admin_scope_filter(
            WebhookEndpoint.objects.order_by("public_id"), request=request, lookup="organization"
        )
        return [(str(e.pk), f"{e.public_id} {e.url}"[:80]) for e in endpoints[: self.limit]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(endpoint_id=int(value))
        return queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(OrganizationScopedAdmin):
    # Fits 1400 px (see the endpoints' list): the next attempt is on the status's hover, the last
    # attempt's time and error on the status code's, every time on the delivery's page.
    list_display = (
        "ref_webhook_event",
        "endpoint_column",
        "tag_type",
        "tag_status",
        "code_last_status",
        "when_created",
    )
    list_display_links = ("ref_webhook_event",)
    list_filter = ("status", "type", "organization", DeliveryEndpointFilter)
    list_select_related = ("endpoint", "organization")
    search_fields = ("=event_id",)  # and the webhook event id: get_search_results
    search_help_text = "A webhook event ID (whevt_…) or an event ID."
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("retry_deliveries",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "webhook_event_id",
                    "organization",
                    "endpoint_link",
                    "type",
                    "event_link",
                )
            },
        ),
        ("Status", {"fields": ("status", "attempts", "last_status_code", "last_error")}),
        (
            "Times (UTC)",
            {"fields": ("created", "last_attempt", "next_attempt", "completed")},
        ),
        ("Request", {"fields": ("request_line", "request_headers", "request_body")}),
        ("Response", {"fields": ("response",)}),
    )
    readonly_fields = (
        "webhook_event_id",
        "organization",
        "endpoint_link",
        "type",
        "event_link",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "created",
        "last_attempt",
        "next_attempt",
        "completed",
        "request_line",
        "request_headers",
        "request_body",
        "response",
    )

    class Media:
        css = ADMIN_CSS

    created = time_field("created_at", "created")
    last_attempt = time_field("last_attempt_at", "last attempt")
    next_attempt = time_field("next_attempt_at", "next attempt")
    completed = time_field("completed_at", "completed (succeeded, or given up)")

    # Written by the pipeline and the sender only; staff retry, nobody edits or deletes (the
    # history of what a receiver was sent stays until its endpoint goes).
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("events_app.change_webhookdelivery")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if term.startswith("whevt_"):
            try:
                return queryset.filter(pk=uuid.UUID(hex=term.removeprefix("whevt_"))), False
            except ValueError:
                return queryset.none(), False
        try:
            uuid.UUID(term)
        except ValueError:
            # Not an id of either kind: no row has it (and "=event_id" would not parse it).
            return (queryset.none(), False) if term else (queryset, False)
        return super().get_search_results(request, queryset, term)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/retry/",
                self.admin_site.admin_view(self.retry_view),
                name="events_app_webhookdelivery_retry",
            ),
            *super().get_urls(),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        context["has_retry_permission"] = self.has_retry_permission(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The delivery page's Retry button: a confirmation, then delivery_retry."""
        delivery = self.get_object(request, unquote(object_id))
        if not self.has_retry_permission(request, delivery):
            raise PermissionDenied
        page = reverse("admin:events_app_webhookdelivery_change", args=[delivery.pk])
        if _confirmed(request):
            delivery_retry(delivery=delivery)
            self.log_change(request, delivery, "Retried.")
            self.message_user(
                request, f"{delivery.webhook_event_id} queued to be sent again.", messages.SUCCESS
            )
            return HttpResponseRedirect(page)
        return _confirmation(
            self,
            request,
            title="Send this delivery again?",
            explanation="It is sent again now, with the same ID and body (receivers deduplicate "
            "on the ID), whatever its status.",
            objects=[delivery],
            cancel_url=page,
            button="Yes, send it again",
        )

    @admin.action(description="Retry selected deliveries now", permissions=["retry"])
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        # `queryset` is cut to the user's organization already: a forged selection drops the rest.
        selected = list(queryset.order_by("created_at")[: ACTION_MAX + 1])
        if len(selected) > ACTION_MAX:
            self.message_user(
                request, f"Only the oldest {ACTION_MAX} selected were retried.", messages.WARNING
            )
        for delivery in selected[:ACTION_MAX]:
            delivery_retry(delivery=delivery)
            self.log_change(request, delivery, "Retried.")
        count = min(len(selected), ACTION_MAX)
        message = ngettext(
            "%(count)d delivery queued to be sent again.",
            "%(count)d deliveries queued to be sent again.",
            count,
        )
        self.message_user(request, message % {"count": count}, messages.SUCCESS)

    # --- List columns
    @admin.display(description="webhook event ID", ordering="id")
    def ref_webhook_event(self, obj: WebhookDelivery) -> SafeString:
        return short_id(obj.webhook_event_id)

    @admin.display(description="endpoint", ordering="endpoint__public_id")
    def endpoint_column(self, obj: WebhookDelivery) -> SafeString:
        return cut_cell(obj.endpoint)

    @admin.display(description="type", ordering="type")
    def tag_type(self, obj: WebhookDelivery) -> SafeString:
        return cut_cell(obj.type)

    @admin.display(description="status (attempts)", ordering="status")
    def tag_status(self, obj: WebhookDelivery) -> SafeString:
        status = obj.get_status_display()
        label = f"{status} ({obj.attempts})" if obj.attempts else status
        title = ngettext("%(count)d attempt", "%(count)d attempts", obj.attempts) % {
            "count": obj.attempts
        }
        if obj.status == WebhookDeliveryStatus.PENDING and obj.next_attempt_at is not None:
            title += f"; next attempt {datetime_display(obj.next_attempt_at)}"
        return format_html('<span title="{}: {}">{}</span>', status, title, label)

    @admin.display(description="last status code", ordering="last_status_code")
    def code_last_status(self, obj: WebhookDelivery) -> SafeString | str:
        if obj.last_attempt_at is None:
            return format_html('<span title="{}">-</span>', "Not tried yet")
        code = "-" if obj.last_status_code is None else str(obj.last_status_code)
        title = f"Last attempt {datetime_display(obj.last_attempt_at)}"
        if obj.last_error:
            title += f": {obj.last_error}"
        return format_html('<span title="{}">{}</span>', title, code)

    @admin.display(description="created", ordering="created_at")
    def when_created(self, obj: WebhookDelivery) -> str:
        return datetime_display(obj.created_at)

    # --- The delivery's page
    @admin.display(description="webhook event ID")
    def webhook_event_id(self, obj: WebhookDelivery) -> str:
        return obj.webhook_event_id

    @admin.display(description="endpoint")
    def endpoint_link(self, obj: WebhookDelivery) -> SafeString:
        url = reverse("admin:events_app_webhookendpoint_change", args=[obj.endpoint_id])
        return format_html('<a href="{}">{}</a>', url, obj.endpoint)

    @admin.display(description="event")
    def event_link(self, obj: WebhookDelivery) -> SafeString | str:
        if obj.event_id is None:
            return "-"
        if not Event.objects.filter(pk=obj.event_id).exists():
            return f"{obj.event_id} (no longer kept)"
        url = reverse("admin:events_app_event_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    @admin.display(description="request")
    def request_line(self, obj: WebhookDelivery) -> SafeString:
        return format_html("<code>POST {}</code>", obj.endpoint.url)

    @admin.display(description="headers")
    def request_headers(self, obj: WebhookDelivery) -> SafeString:
        # As delivery_send sends them (http.client adds Host and Content-Length). The signature
        # is made at each attempt, with the secrets live then; its value is never shown.
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(obj.body.encode("utf-8")))),
            ("User-Agent", USER_AGENT),
            (ID_HEADER, obj.webhook_event_id),
            (SIGNATURE_HEADER, "t=<unix seconds at the attempt>,v1=<hidden: one per live secret>"),
        ]
        return format_html(
            '<pre class="bigmind-json" style="white-space: pre-wrap">{}</pre>',
            format_html_join("\n", "{}: {}", headers),
        )

    @admin.display(description="body")
    def request_body(self, obj: WebhookDelivery) -> SafeString:
        # Sent as stored, on one line; indented here to be read. format_html escapes it.
        try:
            text = json.dumps(json.loads(obj.body), indent=2, ensure_ascii=False)
        except ValueError:
            text = obj.body
        size = len(obj.body.encode("utf-8"))
        return format_html(
            '<pre class="bigmind-json" style="white-space: pre-wrap">{}</pre>'
            '<p class="help">Indented here; sent as stored, compact ({} bytes), the same bytes on '
            "every attempt.</p>",
            text,
            f"{size:,}",
        )

    @admin.display(description="response (first 2 KB)")
    def response(self, obj: WebhookDelivery) -> SafeString | str:
        if obj.last_attempt_at is None:
            return "Not tried yet."
        if not obj.response_excerpt:
            return "-"
        return format_html(
            '<pre class="bigmind-json" style="white-space: pre-wrap">{}</pre>',
            obj.response_excerpt,
        )
