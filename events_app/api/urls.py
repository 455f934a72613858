"""The /v1 URLconf: one route per path, each to its resource module's view."""

from __future__ import annotations

import re

from django.urls import path, re_path

from bigmind.errors import handler404
from events_app.api.batch import EventBatchApi
from events_app.api.events import EventCollectionApi, EventDetailApi
from events_app.api.openapi import ApiDocsPage, OpenApiJsonApi, OpenApiYamlApi
from events_app.api.records import CrmRecordDetailApi
from events_app.api.rejections import RejectionListApi
from events_app.api.signals import SchemaVersionDetailApi, SignalDetailApi, SignalListApi
from events_app.api.validate import EventValidateApi
from events_app.api.webhooks import (
    WebhookDeliveryListApi,
    WebhookDeliveryRetryApi,
    WebhookEndpointCollectionApi,
    WebhookEndpointDetailApi,
    WebhookEndpointRotateSecretApi,
    WebhookEndpointTestApi,
)

_ROUTES = [
    path("events", EventCollectionApi.as_view(), name="event-ingest"),
    path("events/batch", EventBatchApi.as_view(), name="event-batch"),
    path("events/validate", EventValidateApi.as_view(), name="event-validate"),
    # --- write routes (batch, validate) above; read routes below ---
    # `path`, not `str` or `uuid`: a malformed id such as "../x" must reach the view and get
    # the event's own 404, not the catch-all's.
    path("events/<path:event_id>", EventDetailApi.as_view(), name="event-detail"),
    path("rejections", RejectionListApi.as_view(), name="rejection-list"),
    path("signals", SignalListApi.as_view(), name="signal-list"),
    path("signals/<str:slug>", SignalDetailApi.as_view(), name="signal-detail"),
    path(
        "signals/<str:slug>/schemas/<str:version>",
        SchemaVersionDetailApi.as_view(),
        name="schema-version-detail",
    ),
    # A CRM id is the customer's string and may contain '/': it takes the rest of the path.
    path(
        "records/<str:record_type>/<path:record_id>",
        CrmRecordDetailApi.as_view(),
        name="record-detail",
    ),
    path("webhook-endpoints", WebhookEndpointCollectionApi.as_view(), name="webhook-endpoint-list"),
    # `str`: an id never holds '/'; one that does is the catch-all's 404, as unknown as any.
    path(
        "webhook-endpoints/<str:endpoint_id>",
        WebhookEndpointDetailApi.as_view(),
        name="webhook-endpoint-detail",
    ),
    path(
        "webhook-endpoints/<str:endpoint_id>/rotate-secret",
        WebhookEndpointRotateSecretApi.as_view(),
        name="webhook-endpoint-rotate-secret",
    ),
    path(
        "webhook-endpoints/<str:endpoint_id>/test",
        WebhookEndpointTestApi.as_view(),
        name="webhook-endpoint-test",
    ),
    path(
        "webhook-endpoints/<str:endpoint_id>/deliveries",
        WebhookDeliveryListApi.as_view(),
        name="webhook-delivery-list",
    ),
    path(
        "webhook-deliveries/<str:delivery_id>/retry",
        WebhookDeliveryRetryApi.as_view(),
        name="webhook-delivery-retry",
    ),
    # The OpenAPI document and its docs page: no API key needed (SPECTACULAR_SETTINGS).
    path("openapi.json", OpenApiJsonApi.as_view(), name="openapi-json"),
    path("openapi.yaml", OpenApiYamlApi.as_view(), name="openapi-yaml"),
    path("docs", ApiDocsPage.as_view(url_name="openapi-json"), name="api-docs"),
]
# A route with a trailing slash is not the route: 404 `not_found`, naming the path without it
# (bigmind.errors.handler404). First, so that `events/<path:event_id>` does not take
# "batch/" for an event id and answer a POST to /v1/events/batch/ with 405.
_FIXED_ROUTES = "|".join(
    re.escape(str(route.pattern)) for route in _ROUTES if "<" not in str(route.pattern)
)
urlpatterns = [
    re_path(rf"^(?:{_FIXED_ROUTES})/+$", handler404, name="trailing-slash"),
    *_ROUTES,
    # Unknown /v1 paths answer in the envelope even with DEBUG on (Django's debug 404 is HTML).
    re_path(r"^.*$", handler404),
]
