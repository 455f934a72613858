"""The local processor's summary does not depend on the database (issue #12): PostgreSQL's jsonb
keeps an object's keys in its own order, SQLite in the client's, and the same event must read
the same on both (docs/api.md's examples, which show one, run on both)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from events_app.pipeline.processors import EventInfo, ProcessingInput, RecordContext, SignalInfo
from events_app.pipeline.processors.local import LocalProcessor

SENT = {"page": "/docs/quickstart", "duration_seconds": 120, "referrer": "https://google.com"}
# The same object as PostgreSQL returns it from a jsonb column: shorter keys first.
FROM_JSONB = {"page": "/docs/quickstart", "referrer": "https://google.com", "duration_seconds": 120}


def summary(data: dict[str, Any]) -> str:
    """The summary the local processor writes for one event of a plain signal with this data."""
    job = ProcessingInput(
        kind="event",
        signal=SignalInfo(
            slug="page_view", name="Page view", type="event", description="", ai_instructions=""
        ),
        event=EventInfo(
            id="evt_1",
            identity_type="user",
            identity_id="u1",
            data=data,
            timestamp=datetime(2025, 1, 1, tzinfo=UTC),
        ),
        context=RecordContext(signal_events_7d=0, events_7d=0),
        facts={},
    )
    return LocalProcessor().insight(job).summary


def test_the_summary_fields_are_the_same_in_either_key_order() -> None:
    expected = (
        "user u1: Page view "
        "(page=/docs/quickstart, referrer=https://google.com, duration_seconds=120)"
    )
    assert summary(SENT) == expected
    assert summary(FROM_JSONB) == expected


def test_keys_of_one_length_are_ordered_by_their_bytes() -> None:
    # "é" is two bytes in UTF-8: after every one-byte name, "z" included.
    assert summary({"é": 3, "b": 1, "z": 4, "a": 2}) == "user u1: Page view (a=2, b=1, z=4)"
