"""Shared set-up of the observability tests (test_logging.py, test_metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from events_app.pipeline.processors import processor_get


@pytest.fixture
def pipeline_in_process() -> Iterator[None]:
    """Nothing is published to a broker (the tests run the pipeline here, in-process), and the
    processor is loaded afresh from each test's settings."""
    processor_get.cache_clear()
    with (
        mock.patch("events_app.tasks.process_event_task.delay"),
        mock.patch("events_app.tasks.process_event_task.apply_async"),
        mock.patch("events_app.tasks.process_events_task.delay"),
    ):
        yield
    processor_get.cache_clear()


def event_body(signal: str = "visit", **extra: Any) -> dict[str, Any]:
    return {"signal": signal, "identity": {"type": "account", "id": "acc-1"}, "data": {}, **extra}
