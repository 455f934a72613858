from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime

# RFC 9562's method 3 for ids made in the same millisecond: rand_a (12 bits) counts up from a
# random start below 2048, so the ids one process makes sort in the order it made them. With
# 74 random bits only, two ids of one millisecond sorted at random: "the later of two equal
# timestamps" (the pipeline's tie-break on event id) then depended on luck.
_lock = threading.Lock()
_last_ms = 0
_last_seq = 0
_SEQ_MAX = 0xFFF


def uuid7() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, a 12-bit sequence within the
    millisecond, then 62 random bits; increasing within a process.

    Python 3.11 has no `uuid.uuid7`; ids that sort by creation time keep the event table's
    primary-key index append-only.
    """
    global _last_ms, _last_seq
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 11 for a new sequence, 62 for rand_b
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms > _last_ms:
            seq = (rand >> 62) & 0x7FF  # a random start with room to count up
        else:  # the same millisecond (or the clock went back): count on from the last id
            ms, seq = _last_ms, _last_seq + 1
            if seq > _SEQ_MAX:  # 2,048+ ids in one millisecond: borrow the next one
                ms, seq = ms + 1, (rand >> 62) & 0x7FF
        _last_ms, _last_seq = ms, seq
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= seq << 64  # rand_a: the sequence
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)


def uuid7_floor(at: datetime) -> uuid.UUID:
    """The smallest UUID at or above every UUIDv7 made at `at` or later (and below every one
    made earlier): a range bound on ids ordered by time."""
    ms = int(at.timestamp() * 1000)
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80)
