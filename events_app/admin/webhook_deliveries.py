"""The webhook deliveries' admin: read-only (the request as sent, the response excerpt), retried
by a button or a list action. Cut to the user's organization (bigmind/admin_tenancy.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from bigmind.admin_tenancy import OrganizationScopedAdmin, admin_scope_filter
from bigmind.display import datetime_display, short_id
from events_app.admin.display import cut_cell, time_field
from events_app.admin.webhooks import ACTION_MAX, ADMIN_CSS, confirmation_page, confirmed
from events_app.models import Event, WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from events_app.webhooks.sending import ID_HEADER, USER_AGENT, delivery_retry
from events_app.webhooks.signing import HEADER as SIGNATURE_HEADER


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
        if confirmed(request):
            delivery_retry(delivery=delivery)
            self.log_change(request, delivery, "Retried.")
            self.message_user(
                request, f"{delivery.webhook_event_id} queued to be sent again.", messages.SUCCESS
            )
            return HttpResponseRedirect(page)
        return confirmation_page(
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
            ("Content-Length", str(len(obj.body.encode("utf-8"))) if obj.body else "-"),
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
        if not obj.body:
            return format_html(
                '<p class="help">{}</p>',
                "Not built yet: the body is made at the first attempt, from the event as it "
                "stands then, and kept for every retry.",
            )
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
