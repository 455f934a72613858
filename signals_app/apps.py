from __future__ import annotations

from django.apps import AppConfig


class SignalsAppConfig(AppConfig):
    name = "signals_app"
    verbose_name = "Signals"

    def ready(self) -> None:
        # The kernel's request log line names the organization by slug; organizations are ours.
        from bigmind.logs import organization_slug_resolver_set
        from signals_app.selectors import organization_slug

        organization_slug_resolver_set(organization_slug)
