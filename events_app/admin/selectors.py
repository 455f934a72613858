"""What the data plane's admin lists read beyond their own rows: the organization in view, the
choices of the signal filters, the count of rejections that were only counted. Every query is
cut to the user's organization (bigmind.admin_tenancy's scoping) and bounded."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import QuerySet
from django.http import HttpRequest

from bigmind.admin_tenancy import admin_scope, admin_scope_filter
from events_app.ingest.rejections import rejection_overflow_total
from signals_app.models import Signal


def organization_in_view(request: HttpRequest) -> int | None:
    """The organization the list is cut to: a scoped user's own, or the one picked in the
    organization filter. None: no further cut than the user's scope (which for a superuser is
    every organization, and for staff without a membership none)."""
    scope = admin_scope(request)
    if scope.restricted:
        return scope.organization_id
    value = request.GET.get("organization__id__exact", "")
    return int(value) if value.isascii() and value.isdigit() else None


class SignalListFilter(admin.SimpleListFilter):
    """Signals of the organizations in view, by name; not Django's field filter, which would
    list every signal of every organization (or, "related only", read every event for them)."""

    title = "signal"
    parameter_name = "signal"
    # A few dozen signals per organization is usual; past this, pick the organization first.
    max_choices = 100

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        signals = admin_scope_filter(
            Signal.objects.select_related("organization").order_by("organization__slug", "slug"),
            request=request,
            lookup="organization",
        )
        organization = organization_in_view(request)
        if organization is not None:
            signals = signals.filter(organization_id=organization)
        return [(str(signal.pk), str(signal)) for signal in signals[: self.max_choices]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise IncorrectLookupParameters(f"Not a signal id: {value[:40]!r}")
        return queryset.filter(signal_id=int(value))


class SignalSlugFilter(admin.SimpleListFilter):
    # Not a plain field filter: that lists every distinct slug ever refused, and unknown-signal
    # refusals can bring many. The most recent ones (of the selected organization) are enough;
    # search finds the rest.
    title = "signal slug"
    parameter_name = "signal_slug"
    max_choices = 30

    scan_rows = 1000

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        rows = model_admin.get_queryset(request)  # cut to the user's organization
        organization = organization_in_view(request)
        if organization is not None:
            rows = rows.filter(organization_id=organization)
        # The latest rows only (an index range), not a GROUP BY over the whole table.
        latest = rows.order_by("-received_at").values_list("signal_slug", flat=True)
        slugs = list(dict.fromkeys(latest[: self.scan_rows]))[: self.max_choices]
        return [(slug, slug or "(none)") for slug in slugs]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(signal_slug=value)


def rejection_overflow_in_view(request: HttpRequest) -> int:
    """Rejections within retention that were over the per-minute storage cap (counted, not
    stored), for the organization in view."""
    organization = organization_in_view(request)
    if organization is None and admin_scope(request).restricted:
        return 0  # staff without a membership see no organization's numbers
    return rejection_overflow_total(organization_id=organization)
