"""Processors: what turns one event, with its facts and context, into an insight.

A processor is chosen by the BIGMIND_PROCESSOR setting and recorded (name and version) on every
result. It is asked only when an insight is due: every `event` signal event, a metric value that
is unusual against earlier periods, a state that changed. Rollups (aggregates, states,
engagement) are not its business; the pipeline applies them, so a processor can be swapped or
fail without ever touching the numbers.

A processor raises TransientProcessingError for what may work on a later try (timeouts, 429,
5xx, an unusable answer) and PermanentProcessingError for what never will.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string


class ProcessingError(Exception):
    """An event could not be processed; `transient` decides between retry and `failed`."""

    transient = False


class TransientProcessingError(ProcessingError):
    transient = True


class PermanentProcessingError(ProcessingError):
    transient = False


@dataclass(frozen=True)
class SignalInfo:
    slug: str
    name: str
    type: str
    description: str
    ai_instructions: str
    aggregation: str = ""
    period: str = ""
    value_field: str = ""


@dataclass(frozen=True)
class EventInfo:
    id: str
    identity_type: str
    identity_id: str
    data: dict[str, Any]
    timestamp: datetime
    # False: `data` failed schema version `schema_version` and was accepted under the signal's
    # `flag` enforcement; `violations` lists how ({"path", "message", "keyword"}), as a 400
    # would have. A processor should say so rather than trust such data.
    schema_valid: bool = True
    schema_version: int | None = None
    violations: list[dict[str, str]] | None = None

    def schema_note(self) -> str | None:
        """One line saying how `data` failed its schema; None when it passed."""
        if self.schema_valid:
            return None
        found = self.violations or []
        # Cut: a violation's message quotes the offending value, which may be long.
        shown = "; ".join(
            f"{v.get('path', '$')}: {str(v.get('message', ''))[:120]}" for v in found[:3]
        )
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        return f"data failed schema version {self.schema_version}: {shown}{more}"


@dataclass(frozen=True)
class RecordContext:
    """What the record looked like before this event, for the processor to weigh it against."""

    # Events of this signal for this record in the 7 days before this event's timestamp.
    signal_events_7d: int
    # Events of any signal for this record in those 7 days.
    events_7d: int
    # Current states, {signal slug: data}.
    states: dict[str, Any] = field(default_factory=dict)
    # The latest insights, newest first: {"signal", "summary", "score", "occurred_at"}.
    recent_insights: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ProcessingInput:
    kind: str  # an InsightKind value: event | metric_unusual | state_change
    signal: SignalInfo
    event: EventInfo
    context: RecordContext
    # What the pipeline established, by kind. metric_unusual: value, low, high, periods,
    # direction ("above" | "below"). state_change: previous (data or None), current (data).
    facts: dict[str, Any]


@dataclass(frozen=True)
class InsightDraft:
    summary: str
    score: int
    next_action: str
    reasons: list[str]


# The shape every processor answers with; the OpenAI-compatible one validates the model's JSON
# against it, and it is documented in docs/processors.md.
INSIGHT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["summary", "score", "next_action", "reasons"],
    "additionalProperties": False,
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": 500},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "next_action": {"type": "string", "minLength": 1, "maxLength": 500},
        "reasons": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10,
            "items": {"type": "string", "minLength": 1, "maxLength": 500},
        },
    },
}


class Processor(Protocol):
    name: str
    version: str

    def insight(self, job: ProcessingInput) -> InsightDraft: ...


_ALIASES = {
    "local": "events_app.pipeline.processors.local.LocalProcessor",
    "openai": "events_app.pipeline.processors.openai.OpenAIProcessor",
}


@cache
def processor_get() -> Processor:
    """The configured processor, built once per process (it may hold an HTTP session)."""
    path = _ALIASES.get(settings.BIGMIND_PROCESSOR, settings.BIGMIND_PROCESSOR)
    processor: Processor = import_string(path)()
    return processor
