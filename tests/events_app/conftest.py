"""Fixtures the partitioned-events tests share."""

from __future__ import annotations

from typing import Any

import pytest

from signals_app.models import Signal
from tests.conftest import Tenant


@pytest.fixture
def visit(tenant: Tenant) -> Signal:
    return tenant.signal("visit")


@pytest.fixture
def retention(settings: Any) -> Any:
    """Short retentions: completed events 10 days, failed ones 30, metric buckets kept."""
    settings.BIGMIND_EVENT_RETENTION_DAYS = 10
    settings.BIGMIND_FAILED_EVENT_RETENTION_DAYS = 30
    settings.BIGMIND_METRIC_BUCKET_RETENTION_DAYS = 0
    return settings
