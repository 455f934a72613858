"""The local processor's summary does not depend on the database (issue #12): PostgreSQL's jsonb
keeps an object's keys in its own order, SQLite in the client's, and the same event must read
the same on both (docs/api.md's examples, which show one, run on both)."""

from __future__ import annotations

from events_app.pipeline.processors.local import _describe

SENT = {"page": "/docs/quickstart", "duration_seconds": 120, "referrer": "https://google.com"}
# The same object as PostgreSQL returns it from a jsonb column: shorter keys first.
FROM_JSONB = {"page": "/docs/quickstart", "referrer": "https://google.com", "duration_seconds": 120}


def test_the_summary_fields_are_the_same_in_either_key_order() -> None:
    expected = "page=/docs/quickstart, referrer=https://google.com, duration_seconds=120"
    assert _describe(SENT) == expected
    assert _describe(FROM_JSONB) == expected


def test_keys_of_one_length_are_ordered_by_their_bytes() -> None:
    assert _describe({"b": 1, "a": 2, "é": 3, "z": 4}, limit=4) == "a=2, b=1, z=4, é=3"
