"""The time-decayed engagement score of a CRM record.

Score at time t = 100 * (1 - exp(-m(t) / SATURATION)), where m(t) is the sum over the record's
`event`-signal events of relevance * 2^(-(t - timestamp) / half_life), relevance being the
insight's score / 100. So an event counts fully when it happens and half as much one half-life
later; a handful of recent relevant events gives a score near the middle of 0-100.

m(t) = engagement_mass * 2^(-(t - EPOCH) / half_life), where engagement_mass accumulates
relevance * 2^((timestamp - EPOCH) / half_life). The mass is a plain sum, so workers add to it
with one `F()` update in any order and the score still decays between events when it is read.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import F

from events_app.models import CrmRecord

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SATURATION = 5.0
# 2^900 stays far inside a double (and PostgreSQL float8): with the default 14-day half-life
# that is year 2059 before events stop gaining on older ones (documented in docs/operations.md).
_MAX_EXPONENT = 900.0


def _exponent(at: datetime) -> float:
    half_life = settings.BIGMIND_ENGAGEMENT_HALF_LIFE_DAYS * 86400.0
    return max(-_MAX_EXPONENT, min(_MAX_EXPONENT, (at - EPOCH).total_seconds() / half_life))


def engagement_mass_of(*, weight: float, timestamp: datetime) -> float:
    return weight * 2.0 ** _exponent(timestamp)


def engagement_add(*, crm_record_id: int, weight: float, timestamp: datetime) -> None:
    """Add (or, with a negative weight, take back) one event's contribution."""
    if weight == 0:
        return
    CrmRecord.objects.filter(pk=crm_record_id).update(
        engagement_mass=F("engagement_mass")
        + engagement_mass_of(weight=weight, timestamp=timestamp)
    )


def engagement_score(*, mass: float, at: datetime) -> float:
    if mass <= 0:
        return 0.0
    decayed = mass * 2.0 ** (-_exponent(at))
    return round(100.0 * (1.0 - math.exp(-decayed / SATURATION)), 1)
