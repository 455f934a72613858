"""The signal form (settings and a new schema version, checked by the services' own rules) and
the "try a payload" form."""

from __future__ import annotations

import json
import math
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.forms.fields import InvalidJSONInput

from bigmind.errors import ApplicationError
from bigmind.json_path import detail_line
from signals_app import services
from signals_app.models import Enforcement, Signal, SignalType
from signals_app.schemas import schema_check
from signals_app.services import SIGNAL_SETTINGS

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
        # Forms posted by tools written before these settings existed keep the signal's own
        # (or the default) values: see clean().
        for name in ("enforcement", "redact"):
            if name in self.fields:
                self.fields[name].required = False

    def clean(self) -> dict[str, Any]:
        # The services' own checks, run here so that a problem is a form error next to the
        # form rather than an exception at save time. A problem with one field is put on that
        # field: ModelForm then also leaves out the database constraints on it
        # (signal_metric_has_aggregation_and_period...), whose messages would repeat it at the
        # top of the form.
        cleaned = super().clean() or {}
        if "enforcement" in self.fields and not cleaned.get("enforcement"):
            cleaned["enforcement"] = self.instance.enforcement or Enforcement.REJECT
        if "redact" in self.fields and cleaned.get("redact") in (None, ""):
            cleaned["redact"] = self.instance.redact if self.instance.pk else []
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
                checked = services.signal_settings_check(settings)
            except ApplicationError as exc:
                field = "redact" if exc.message.startswith("redact") else None
                if field is None:
                    raise forms.ValidationError(exc.message) from exc
                self.add_error(field, exc.message)
                return cleaned
            if "redact" in checked:
                cleaned["redact"] = checked["redact"]
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
