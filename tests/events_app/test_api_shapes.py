"""The answers built by hand on the ingest hot path have exactly the shapes their serializers
declare (and the document shows): same fields, same order, same values."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from events_app.api.batch import EventBatchItemAcceptedSerializer, batch_item_data
from events_app.api.events import EventAcceptedSerializer, event_public_data


def _event(**overrides: object) -> SimpleNamespace:
    fields = {"id": uuid.uuid4(), "schema_version": 3, "status": "pending", "reference": None}
    return SimpleNamespace(**{**fields, **overrides})


@pytest.mark.parametrize("reference", [None, "evt-001"])
def test_the_ingest_answer_is_the_declared_accepted_event(reference: str | None) -> None:
    event = _event(reference=reference)
    declared = EventAcceptedSerializer().to_representation(
        {**vars(event), "signal_id": "sig_abcdefgh"}
    )
    built = event_public_data(event, signal_public_id="sig_abcdefgh")  # type: ignore[arg-type]
    assert list(built.items()) == list(declared.items())


@pytest.mark.parametrize("replayed", [False, True])
def test_an_accepted_batch_item_is_the_declared_item(replayed: bool) -> None:
    event = _event()
    item = SimpleNamespace(
        error=None,
        event=event,
        signal=SimpleNamespace(public_id="sig_abcdefgh"),
        index=4,
        replayed=replayed,
        payload={},
    )
    declared = EventBatchItemAcceptedSerializer().to_representation(
        {**vars(event), "signal_id": "sig_abcdefgh", "index": 4}
    )
    if not replayed:
        del declared["replayed"]  # present only on a replay
    assert list(batch_item_data(item).items()) == list(declared.items())
