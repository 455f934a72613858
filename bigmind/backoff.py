"""Retry waits: exponential backoff with "equal jitter" (half fixed, half random), capped.

One rule for the pipeline's event retries (events_app/pipeline/completion.py) and the webhook
sender's delivery retries (events_app/webhooks/sending.py), each with its own settings.
"""

from __future__ import annotations

import random

# Past this many doublings any base has reached any cap; and 2 ** 1100 would overflow a float.
_MAX_DOUBLINGS = 40


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before the retry that follows attempt number `attempt` (1 for the first): between
    half and all of min(cap, base * 2^(attempt-1))."""
    ceiling = min(cap, base * 2 ** min(max(0, attempt - 1), _MAX_DOUBLINGS))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter, not a secret
