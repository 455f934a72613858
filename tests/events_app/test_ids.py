"""events_app.ids.uuid7: RFC 9562 version 7 ids that sort in the order a process makes them."""

from __future__ import annotations

import time
from unittest import mock

from events_app.ids import uuid7


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made() -> None:
    with mock.patch("events_app.ids.time.time_ns", return_value=1_796_400_000_000_000_000):
        ids = [uuid7() for _ in range(3000)]  # more than one millisecond's sequence holds
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(value.version == 7 and value.variant == "specified in RFC 4122" for value in ids)


def test_ids_follow_the_clock_and_never_go_back_with_it() -> None:
    now = time.time_ns()
    with mock.patch("events_app.ids.time.time_ns", return_value=now + 10**9):
        later = uuid7()
    with mock.patch("events_app.ids.time.time_ns", return_value=now):  # the clock went back
        after = uuid7()
    assert after > later
    assert (later.int >> 80) == (now + 10**9) // 1_000_000
