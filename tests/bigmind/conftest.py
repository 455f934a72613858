"""Shared set-up of the observability tests (test_logging.py, test_metrics.py)."""

from __future__ import annotations

from typing import Any


def event_body(signal: str = "visit", **extra: Any) -> dict[str, Any]:
    return {"signal": signal, "identity": {"type": "account", "id": "acc-1"}, "data": {}, **extra}
