"""Replaying a rejected event after a fix: ingest runs again on the stored body.

Apart from `rejections` because it calls ingest (`services.event_ingest`), which itself records
refusals through `rejections`: one way, services -> rejections, replay -> services.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bigmind.errors import ApplicationError, Conflict
from events_app.ingest.auth import ApiClient
from events_app.ingest.services import event_ingest
from events_app.models import RejectedEvent


class RejectionNotReplayable(Conflict):
    code = "rejection_not_replayable"


@dataclass(frozen=True)
class RejectionReplayResult:
    rejection: RejectedEvent
    event_id: uuid.UUID | None  # the event ingest stored (or an idempotent replay's event)
    error: ApplicationError | None  # what ingest answered when it refused the body again

    @property
    def accepted(self) -> bool:
        return self.error is None


def rejection_replay(*, rejection: RejectedEvent) -> RejectionReplayResult:
    """Run ingest again on the stored body, for the rejection's organization.

    Accepted: the rejection links the event and the time. Refused again: the new error is
    returned and nothing is stored (no second rejection row: a replay is not a client request).
    Raises RejectionNotReplayable for a truncated body or a rejection already replayed.
    """
    if rejection.body_truncated:
        raise RejectionNotReplayable(
            f"The stored body was truncated ({rejection.body_bytes} bytes sent, "
            f"{settings.BIGMIND_REJECTION_BODY_MAX_BYTES} kept), so it cannot be replayed; "
            "the client must send the event again"
        )
    with transaction.atomic():
        # Locked until the outcome is written: two staff replaying together make one event.
        locked = RejectedEvent.objects.select_for_update().filter(pk=rejection.pk).first()
        if locked is None:
            raise RejectionNotReplayable("The rejection no longer exists (retention purge)")
        if locked.replayed_event_id is not None:
            raise RejectionNotReplayable(
                f"The rejection was already replayed as event {locked.replayed_event_id}"
            )
        client = ApiClient(
            api_key_id=locked.api_key_id or 0, organization_id=locked.organization_id
        )
        try:
            result = event_ingest(
                client=client, raw_body=locked.body.encode(), record_rejection=False
            )
        except ApplicationError as exc:
            return RejectionReplayResult(rejection=locked, event_id=None, error=exc)
        locked.replayed_event_id = result.event.id
        locked.replayed_at = timezone.now()
        locked.save(update_fields=["replayed_event_id", "replayed_at"])
    return RejectionReplayResult(rejection=locked, event_id=result.event.id, error=None)
