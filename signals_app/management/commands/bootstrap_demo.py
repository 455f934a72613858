from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser
from django.db import transaction

from signals_app.management.commands._base import ControlPlaneCommand
from signals_app.models import ApiKey
from signals_app.services import (
    api_key_create,
    api_key_hash,
    api_key_reinstate,
)
from signals_app.signals_as_code import signals_sync

# Fixed so that the README's curl works as printed. Local demo only: the command refuses to
# run with DEBUG off unless told otherwise.
DEMO_API_KEY = "sk_demo_local_only_not_for_production_000000"
DEMO_ADMIN_USER = "admin"
DEMO_ADMIN_PASSWORD = "admin"  # noqa: S105

DEMO_SIGNALS = {
    "organization": "demo",
    "signals": [
        {
            "slug": "visited-documentation-page",
            "name": "Visited documentation page",
            "type": "event",
            "description": "A person at the account read a page of our documentation.",
            "ai_instructions": "Quickstart and pricing pages signal buying intent.",
        },
        {
            "slug": "api-calls",
            "name": "API calls",
            "type": "metric",
            "description": "Calls to the public API",
            "ai_instructions": "A rising trend means expansion potential.",
            "aggregation": "sum",
            "period": "day",
            "value_field": "value",
            "schemas": [
                {
                    "version": 1,
                    "schema": {
                        "type": "object",
                        "required": ["value"],
                        "properties": {"value": {"type": "number"}},
                    },
                }
            ],
        },
        {
            "slug": "health-state",
            "name": "Health state",
            "type": "state",
            "description": "Customer health as computed by the success team",
            "ai_instructions": "A move to red needs attention within a day.",
            "schemas": [
                {
                    "version": 1,
                    "schema": {
                        "type": "object",
                        "required": ["state"],
                        "properties": {"state": {"enum": ["green", "yellow", "red"]}},
                    },
                }
            ],
        },
    ],
}


class Command(ControlPlaneCommand):
    help = (
        "Create the demo organization, an admin user, one signal of each type and the demo "
        "API key. Idempotent. Local development only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help="run even with DEBUG off (it creates a well-known key and admin password)",
        )
        parser.add_argument(
            "--base-url", default=os.environ.get("BIGMIND_BASE_URL", "http://127.0.0.1:8000")
        )

    def handle(self, *args: Any, allow_production: bool, base_url: str, **options: Any) -> None:
        if not settings.DEBUG and not allow_production:
            raise CommandError(
                "bootstrap_demo creates a well-known API key and admin password; it runs only "
                "with DJANGO_DEBUG=true (or --allow-production)."
            )
        with transaction.atomic():
            signals_sync(document=DEMO_SIGNALS)
            from signals_app.models import Organization

            organization = Organization.objects.get(slug="demo")
            if not ApiKey.objects.filter(key_hash=api_key_hash(DEMO_API_KEY)).exists():
                api_key_create(organization=organization, name="demo", raw_key=DEMO_API_KEY)
            api_key_reinstate(api_key=ApiKey.objects.get(key_hash=api_key_hash(DEMO_API_KEY)))
            user_model = get_user_model()
            user, _ = user_model.objects.get_or_create(username=DEMO_ADMIN_USER)
            user.is_staff = user.is_superuser = True
            user.set_password(DEMO_ADMIN_PASSWORD)
            user.save()

        base = base_url.rstrip("/")
        self.stdout.write(
            f"""
Bigmind Signals demo is ready.

  Admin:    {base}/admin/   (login: {DEMO_ADMIN_USER} / {DEMO_ADMIN_PASSWORD})
  API key:  {DEMO_API_KEY}

  Send an event:

curl -X POST {base}/v1/events \\
  -H "Authorization: Bearer {DEMO_API_KEY}" \\
  -H "Content-Type: application/json" \\
  -d '{{"signal": "visited-documentation-page", "version": "latest",
       "identity": {{"type": "account", "id": "001ABC000000123"}},
       "data": {{"page": "/docs/quickstart", "duration_seconds": 120}},
       "reference": "evt-001"}}'
"""
        )
