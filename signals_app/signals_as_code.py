"""Signals as code: a document (`sync_signals`' YAML or JSON file, bootstrap_demo's dict) applied
whole or not at all, through the same services as the admin (so every change it makes is in the
audit log, made by the command that ran it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from bigmind.errors import BadRequest, Conflict
from signals_app.models import Compatibility, Enforcement, Signal
from signals_app.organizations import organization_get_or_create
from signals_app.services import (
    SIGNAL_SETTINGS,
    schema_version_create,
    signal_create,
    signal_settings_check,
    signal_slug_check,
    signal_update,
)


@dataclass
class SyncReport:
    organization_created: bool = False
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    versions_added: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.organization_created:
            out.append("organization created")
        out += [f"created {slug}" for slug in self.created]
        out += [f"updated {slug}" for slug in self.updated]
        out += [f"unchanged {slug}" for slug in self.unchanged]
        out += [f"added schema {item}" for item in self.versions_added]
        return out


# What a signals-as-code entry means by leaving a setting out.
SYNC_DEFAULTS: dict[str, Any] = {
    "description": "",
    "ai_instructions": "",
    "active": True,
    "rate_limit_per_minute": None,
    "compatibility": Compatibility.NONE,
    "aggregation": "",
    "period": "",
    "value_field": "",
    "enforcement": Enforcement.REJECT,
    "redact": [],
}


def _sync_item_check(index: int, item: Any) -> dict[str, Any]:
    where = f"signals[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be a mapping")
    allowed = {*SIGNAL_SETTINGS, "slug", "schemas"}
    unknown = set(item) - allowed
    if unknown:
        raise BadRequest(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    if not isinstance(item.get("slug"), str):
        raise BadRequest(f"{where}: slug is required")
    schemas = item.get("schemas") or []
    if not isinstance(schemas, list):
        raise BadRequest(f"{where}: schemas must be a list")
    for n, entry in enumerate(schemas, start=1):
        if not isinstance(entry, dict) or set(entry) != {"version", "schema"}:
            raise BadRequest(f"{where}.schemas[{n - 1}] must have exactly version and schema")
        if entry["version"] != n:
            raise BadRequest(
                f"{where}.schemas must be numbered 1, 2, 3... in order; found version "
                f"{entry['version']!r} at position {n}"
            )
    return item


def signals_sync(*, document: Any) -> SyncReport:
    """Apply a signals-as-code document: all of it, or (on any error) nothing."""
    if not isinstance(document, dict) or not isinstance(document.get("organization"), str):
        raise BadRequest("The document needs 'organization' (a slug) and 'signals' (a list)")
    items = document.get("signals") or []
    if not isinstance(items, list):
        raise BadRequest("'signals' must be a list")
    unknown = set(document) - {"organization", "signals"}
    if unknown:
        raise BadRequest(f"Unknown top-level fields: {', '.join(sorted(unknown))}")
    checked = [_sync_item_check(i, item) for i, item in enumerate(items)]
    slugs = [item["slug"] for item in checked]
    if len(set(slugs)) != len(slugs):
        raise BadRequest("A slug appears twice in the document")

    report = SyncReport()
    with transaction.atomic():
        organization, report.organization_created = organization_get_or_create(
            slug=document["organization"]
        )
        for item in checked:
            slug = signal_slug_check(item["slug"])
            # The file is the source of truth: a setting it leaves out takes its default.
            settings = signal_settings_check(
                {**SYNC_DEFAULTS, "name": slug}
                | {k: v for k, v in item.items() if k in SIGNAL_SETTINGS}
            )
            existing = Signal.objects.filter(organization=organization, slug=slug).first()
            if existing is None:
                signal = signal_create(organization=organization, slug=slug, **settings)
                report.created.append(slug)
            elif any(getattr(existing, name) != value for name, value in settings.items()):
                signal = signal_update(signal=existing, **settings)
                report.updated.append(slug)
            else:
                signal = existing
                report.unchanged.append(slug)
            stored = {v.version: v.schema for v in signal.schema_versions.all()}
            for entry in item.get("schemas") or []:
                number, schema = entry["version"], entry["schema"]
                if number in stored:
                    if stored[number] != schema:
                        raise Conflict(
                            f"{slug} schema version {number} exists with different content; "
                            f"versions are immutable, add a new version instead"
                        )
                    continue
                created = schema_version_create(signal=signal, schema=schema)
                if created.version != number:
                    raise Conflict(
                        f"{slug}: the file adds version {number} but the next version is "
                        f"{created.version}"
                    )
                report.versions_added.append(f"{slug} v{number}")
    return report
