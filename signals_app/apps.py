from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class SignalsAppConfig(AppConfig):
    name = "signals_app"
    verbose_name = "Signals"

    def ready(self) -> None:
        # The kernel's request log line names the organization by slug; organizations are ours.
        from bigmind.logs import organization_slug_resolver_set
        from signals_app.selectors import organization_slug

        organization_slug_resolver_set(organization_slug)

        # Deleting a user cascades to their membership without a service: record it then.
        from django.contrib.auth import get_user_model
        from django.db.models.signals import pre_delete

        pre_delete.connect(
            _user_deleted, sender=get_user_model(), dispatch_uid="signals_app-user-deleted"
        )


def _user_deleted(sender: object, instance: Any, **_: object) -> None:
    from signals_app.organizations import membership_user_deleted

    membership_user_deleted(user=instance)
