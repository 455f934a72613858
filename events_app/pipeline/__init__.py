"""The AI-processing pipeline.

NOT BUILT YET: this is the receiving end of the queue only. Ingest queues every accepted event
here (task `events.process_event`, queue `events.process`); the processing itself (claim,
processors, rollups, retries, sweep) is issue #4. Until then an event stays `pending` and this
function only confirms the event exists and logs that it is waiting.
"""

from __future__ import annotations

import logging

from events_app.models import Event

logger = logging.getLogger(__name__)


def event_process(*, event_id: str) -> None:
    status = Event.objects.filter(pk=event_id).values_list("status", flat=True).first()
    if status is None:
        logger.warning("process_event: event %s does not exist", event_id)
        return
    logger.info(
        "process_event: event %s is %s; processing is not implemented yet (issue #4)",
        event_id,
        status,
    )
