"""The webhook endpoint form: what the add and change pages post, saved through the endpoint
services (events_app/webhooks/endpoints.py) so the rules live once and their errors land on
the fields they are about."""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest

from bigmind.admin_tenancy import admin_scope_filter
from events_app.models import WebhookEndpoint
from events_app.webhooks.endpoints import (
    SUBSCRIBABLE,
    InvalidEndpoint,
    endpoint_create,
    endpoint_update,
)
from signals_app.models import Signal

ALL_EVENTS = "*"
EVENT_CHOICES = [
    (ALL_EVENTS, "All event types, including any added later (*)"),
    *((name, name) for name in SUBSCRIBABLE),
]
# The form's fields the services take, by the names their errors carry.
SERVICE_FIELDS = ("url", "events", "signals", "description", "enabled")


class SignalChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Signal) -> str:
        return f"{obj.organization.slug}/{obj.slug}"


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=EVENT_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        help_text="The webhook event types sent to this endpoint. Ping is sent only by "
        '"Send test event".',
    )
    signals = SignalChoiceField(
        queryset=Signal.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Only events of these signals. None checked: every signal of the organization, "
        "present and future.",
    )

    # Set on the class WebhookEndpointAdmin.get_form makes for each request: the user's
    # organizations decide which signals the add form offers.
    request: HttpRequest | None = None

    class Meta:
        model = WebhookEndpoint
        fields = ("organization", "url", "description", "enabled")
        widgets = {
            "url": forms.TextInput(attrs={"size": 80, "placeholder": "https://"}),
            "description": forms.TextInput(attrs={"size": 80}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set by _post_clean: the secret of an endpoint just created, shown once.
        self.secret: str | None = None
        signals = Signal.objects.select_related("organization").order_by(
            "organization__slug", "slug"
        )
        if self.instance.pk:
            signals = signals.filter(organization_id=self.instance.organization_id)
            self.initial.setdefault("events", self.instance.event_types)
            self.initial.setdefault("signals", self.instance.signal_ids)
        elif self.request is not None:
            signals = admin_scope_filter(signals, request=self.request, lookup="organization")
        signals_field = self.fields["signals"]
        assert isinstance(signals_field, SignalChoiceField)
        signals_field.queryset = signals

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        events = cleaned.get("events") or []
        if ALL_EVENTS in events and len(events) > 1:
            self.add_error(
                "events", "Check either all event types (*) or particular ones, not both."
            )
        organization = (
            self.instance.organization if self.instance.pk else cleaned.get("organization")
        )
        if organization is not None:
            # The service takes slugs, and another organization may use the same slug: a signal
            # picked from another organization must not quietly become this one's namesake.
            foreign = [
                s for s in cleaned.get("signals") or [] if s.organization_id != organization.pk
            ]
            if foreign:
                self.add_error(
                    "signals",
                    f"Not signals of {organization.slug}: "
                    + ", ".join(f"{s.organization.slug}/{s.slug}" for s in foreign),
                )
        return cleaned

    def _post_clean(self) -> None:
        # After the fields' and the model's own checks (as Django's UserCreationForm checks
        # passwords here), the services run: an InvalidEndpoint becomes an error beside its
        # field, never a 500. They save as they check; changeform_view holds the whole request
        # in one transaction, so nothing is left behind by a form that then fails.
        super()._post_clean()  # type: ignore[misc]
        if self.errors:
            return
        try:
            self._save_through_services()
        except InvalidEndpoint as error:
            self._add_service_errors(error)

    def _save_through_services(self) -> None:
        data = self.cleaned_data
        values = {
            "url": data["url"],
            "events": list(data["events"]),
            "signals": [signal.slug for signal in data.get("signals") or []],
            "description": data.get("description") or "",
            "enabled": bool(data.get("enabled")),
        }
        if self.instance.pk is None:
            created = endpoint_create(organization=data["organization"], **values)
            self.instance, self.secret = created.endpoint, created.secret
            return
        changed = {name: values[name] for name in SERVICE_FIELDS if name in self.changed_data}
        # A fresh copy: construct_instance has already put the posted values on self.instance,
        # and endpoint_update must see the stored `enabled` to tell a re-enable (which clears
        # the disabled reason and the failure run) from a form posted back unchanged.
        endpoint = WebhookEndpoint.objects.select_related("organization").get(pk=self.instance.pk)
        if changed:
            endpoint_update(endpoint, **changed)
        self.instance = endpoint

    def _add_service_errors(self, error: InvalidEndpoint) -> None:
        placed = False
        for detail in error.details or []:
            field = detail.get("field")
            message = str(detail.get("message") or error.message)
            if field in SERVICE_FIELDS and field in self.fields:
                self.add_error(field, message[:1].upper() + message[1:])
                placed = True
        if not placed:
            self.add_error(None, error.message)
