"""The default processor: deterministic rules, no network, the same answer for the same input.

It reads the signal's AI instructions only for words (a state value named there matters more);
its scores come from how fresh and how frequent the activity is, how far a metric left its
usual range, and whether a state moved to a value that reads as bad.
"""

from __future__ import annotations

import re
from typing import Any

from events_app.pipeline.processors import InsightDraft, ProcessingInput

# State values that read as trouble, and as good news; matched case-insensitively.
_BAD_WORDS = frozenset(
    {
        "red",
        "critical",
        "down",
        "failed",
        "failing",
        "error",
        "churn",
        "churned",
        "at_risk",
        "at-risk",
        "blocked",
        "cancelled",
        "canceled",
        "degraded",
        "unhealthy",
        "lost",
    }
)
_GOOD_WORDS = frozenset(
    {"green", "healthy", "ok", "up", "active", "won", "resolved", "expanded", "renewed"}
)


def _clamp(score: float) -> int:
    return max(0, min(100, round(score)))


def _describe(data: dict[str, Any], limit: int = 3) -> str:
    """A short 'k=v, k=v' of the first scalar fields, for a one-line summary.

    "First" in the order PostgreSQL's jsonb keeps an object's keys (shorter names first, then by
    bytes), not the order the client sent: jsonb does not keep that, SQLite does, and the same
    event must get the same summary on either database (issue #12: docs/api.md's examples are
    run on both)."""
    parts = []
    for key in sorted(data, key=lambda name: (len(name.encode()), name.encode())):
        value = data[key]
        if isinstance(value, str | int | float | bool) and not isinstance(value, dict):
            text = str(value)
            parts.append(f"{key}={text[:40]}")
        if len(parts) == limit:
            break
    return ", ".join(parts)


def _state_label(data: Any) -> str:
    if isinstance(data, dict):
        if len(data) == 1:
            return str(next(iter(data.values())))[:60]
        for key in ("state", "status", "value"):
            if key in data:
                return str(data[key])[:60]
        return _describe(data) or "{}"
    return str(data)[:60]


def _mentions(text: str, label: str) -> bool:
    """Whether `text` names `label` as a word (a short or empty label names nothing)."""
    if len(label.strip()) < 2:
        return False
    return re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE) is not None


def _tone(label: str) -> int:
    words = {label.lower()} | set(label.lower().replace("-", "_").split("_"))
    if words & _BAD_WORDS:
        return -1
    if words & _GOOD_WORDS:
        return 1
    return 0


def _flagged(draft: InsightDraft, job: ProcessingInput) -> InsightDraft:
    """The draft of an event whose data failed its schema (accepted under `flag` enforcement)
    says so: in the summary, which is what a reader sees first, and first among the reasons."""
    note = job.event.schema_note()
    if note is None:
        return draft
    suffix = f" [data failed schema version {job.event.schema_version}]"
    summary = draft.summary[: 500 - len(suffix)] + suffix
    reason = (note[0].upper() + note[1:])[:499] + "."
    reasons = [reason, *draft.reasons][:10]
    return InsightDraft(
        summary=summary, score=draft.score, next_action=draft.next_action, reasons=reasons
    )


class LocalProcessor:
    name = "local"
    version = "1"
    # Only the 7-day event counts are used: the record's states and recent insights would be
    # two queries per insight for nothing.
    wants_context = False
    # A call costs microseconds: a whole chunk of events is planned and completed at once.
    max_chunk_size = 10_000

    def insight(self, job: ProcessingInput) -> InsightDraft:
        if job.kind == "metric_unusual":
            draft = self._metric(job)
        elif job.kind == "state_change":
            draft = self._state(job)
        else:
            draft = self._event(job)
        return _flagged(draft, job)

    def _event(self, job: ProcessingInput) -> InsightDraft:
        signal, event, context = job.signal, job.event, job.context
        score = 40.0
        reasons = [f"A '{signal.name}' event for this {event.identity_type}."]
        repeats = context.signal_events_7d
        if repeats:
            bump = min(30, repeats * 6)
            score += bump
            reasons.append(f"{repeats} earlier '{signal.name}' event(s) in the 7 days before.")
        else:
            reasons.append(f"First '{signal.name}' event in 7 days.")
        others = context.events_7d - repeats
        if others:
            score += min(20, others * 2)
            reasons.append(f"{others} event(s) of other signals in those 7 days.")
        if signal.ai_instructions:
            score += 5
            reasons.append("The signal has instructions marking it as worth reading.")
        details = _describe(event.data)
        summary = f"{event.identity_type} {event.identity_id}: {signal.name}"
        if details:
            summary += f" ({details})"
        final = _clamp(score)
        if final >= 70:
            action = f"Reach out to {event.identity_type} {event.identity_id} within a day."
        elif final >= 50:
            action = (
                f"Review {event.identity_type} {event.identity_id}'s recent activity this week."
            )
        else:
            action = "No action yet; keep watching this record."
        return InsightDraft(summary=summary[:500], score=final, next_action=action, reasons=reasons)

    def _metric(self, job: ProcessingInput) -> InsightDraft:
        signal, event, facts = job.signal, job.event, job.facts
        value, low, high = facts["value"], facts["low"], facts["high"]
        direction = facts["direction"]
        span = max(high - low, abs(high) * 0.1, abs(low) * 0.1, 1e-9)
        distance = (value - high) / span if direction == "above" else (low - value) / span
        score = _clamp(55 + 15 * min(distance, 3))
        periods = facts["periods"]
        summary = (
            f"{signal.name} for {event.identity_type} {event.identity_id}: {value:g} is "
            f"{direction} the usual range {low:g} to {high:g} of the previous {periods} "
            f"{signal.period or 'period'}(s)"
        )
        reasons = [
            f"Value {value:g} against {low:g} to {high:g} over {periods} earlier period(s).",
            f"It is {distance:.1f} times that range's width {direction} it.",
        ]
        if direction == "above":
            action = f"Look for expansion potential at {event.identity_type} {event.identity_id}."
        else:
            action = f"Check {event.identity_type} {event.identity_id} for a drop in usage."
        return InsightDraft(summary=summary[:500], score=score, next_action=action, reasons=reasons)

    def _state(self, job: ProcessingInput) -> InsightDraft:
        signal, event, facts = job.signal, job.event, job.facts
        current = _state_label(facts["current"])
        previous = facts["previous"]
        if previous is None:
            summary = f"{signal.name} for {event.identity_type} {event.identity_id} is {current}"
            reasons = ["First state reported for this record."]
        else:
            before = _state_label(previous)
            summary = (
                f"{signal.name} for {event.identity_type} {event.identity_id} changed "
                f"from {before} to {current}"
            )
            reasons = [f"State moved from {before} to {current}."]
        score = 50.0
        tone = _tone(current)
        if tone < 0:
            score += 30
            reasons.append(f"'{current}' reads as trouble.")
        elif tone > 0:
            score -= 10 if previous is None else 0
            reasons.append(f"'{current}' reads as good news.")
        if _mentions(signal.ai_instructions, current):
            score += 15
            reasons.append(f"The signal's instructions mention '{current}'.")
        final = _clamp(score)
        if tone < 0:
            action = f"Contact {event.identity_type} {event.identity_id} about the change today."
        elif final >= 60:
            action = f"Review {event.identity_type} {event.identity_id} with its owner this week."
        else:
            action = "No action needed; note the change."
        return InsightDraft(summary=summary[:500], score=final, next_action=action, reasons=reasons)
