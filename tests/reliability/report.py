"""The fault suite's results: one JSON file per fault under the var dir, and the Markdown table.

Each test writes `<var dir>/fault-report/<fault>.json` (overwritten by the next run of that
test); the suite prints the table of the tests it ran at the end of the session, and
`scripts/fault_report.py` prints the table of whatever files are there (docs/reliability.md).
Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_DIR_NAME = "fault-report"
ORDER = (
    "worker-sigkill",
    "redis-restart",
    "postgres-restart",
    "cache-unreachable",
    "web-sigkill",
    "webhook-worker-sigkill",
)


@dataclass
class WebhookCounts:
    """The webhook fault's deliveries: what the database says is owed, what the receiver got."""

    owed: int  # delivery rows the completed events owe (event.completed, insight.created ...)
    received: int  # requests the receiver got, duplicates included
    distinct: int  # distinct webhook ids among them
    duplicates: int  # received - distinct: at-least-once delivery, allowed and counted
    lost: int  # owed ids never received, or delivery rows missing or not `succeeded`
    not_owed: int  # ids received that are no delivery row of the endpoint, or rows not owed
    bad_signatures: int  # bodies that do not verify with the endpoint's secret (or differ)
    delivered_seconds: float  # from the end of the load until no delivery is pending
    in_flight_at_kill: int  # sends the receiver had not answered when the sender was killed
    resent_after_kill: int  # ... of which received again afterwards


@dataclass
class FaultRow:
    fault: str
    description: str
    sent: int
    accepted: int  # 2xx
    unavailable: int  # 503 in the envelope
    other_errors: int  # any other status, a 503 without the envelope, or a client-side error
    lost: int  # 2xx but not stored, or stored but never `completed`
    duplicated: int  # stored more than once, or counted more than once in the rollups
    stored_after_503: int
    fault_seconds: float  # from injecting the fault to undoing it
    recovered_seconds: float | None  # from undoing it until every event accepted before is done
    completed_seconds: float  # from the end of the load until every accepted event is done
    p99_ms: float
    max_ms: float
    finished_at: str
    errors: dict[str, int] = field(default_factory=dict)  # other_errors by kind
    notes: str = ""  # what the fault found (e.g. claims a killed worker held)
    webhooks: WebhookCounts | None = None  # the webhook fault only

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def report_dir(var_dir: Path) -> Path:
    return var_dir / REPORT_DIR_NAME


def row_write(var_dir: Path, row: FaultRow) -> Path:
    directory = report_dir(var_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{row.fault}.json"
    path.write_text(row.to_json() + "\n")
    return path


def rows_read(directory: Path) -> list[dict[str, Any]]:
    rows = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    rank = {name: n for n, name in enumerate(ORDER)}
    return sorted(rows, key=lambda row: (rank.get(row["fault"], len(ORDER)), row["fault"]))


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fault | sent | accepted (2xx) | 503 | other errors | lost | duplicated "
        "| 503 but stored | fault held (s) | recovered (s) | all completed (s) | p99 / max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        errors = row["other_errors"]
        if errors and row.get("errors"):
            kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(row["errors"].items()))
            errors = f"{errors} ({kinds})"
        lines.append(
            f"| {row['fault']} | {row['sent']} | {row['accepted']} | {row['unavailable']} "
            f"| {errors} | {row['lost']} | {row['duplicated']} | {row['stored_after_503']} "
            f"| {row['fault_seconds']:.1f} | {_seconds(row['recovered_seconds'])} "
            f"| {row['completed_seconds']:.1f} | {row['p99_ms']:.0f} / {row['max_ms']:.0f} |"
        )
    return "\n".join(lines)


def webhook_table(rows: list[dict[str, Any]]) -> str:
    """The deliveries of the rows that have them ("" when none has)."""
    rows = [row for row in rows if row.get("webhooks")]
    if not rows:
        return ""
    lines = [
        "| fault | deliveries owed | received | distinct | duplicates | lost | not owed "
        "| bad signatures | in flight at the kill (received again) | all delivered (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        w = row["webhooks"]
        lines.append(
            f"| {row['fault']} | {w['owed']} | {w['received']} | {w['distinct']} "
            f"| {w['duplicates']} | {w['lost']} | {w['not_owed']} | {w['bad_signatures']} "
            f"| {w['in_flight_at_kill']} ({w['resent_after_kill']}) "
            f"| {w['delivered_seconds']:.1f} |"
        )
    return "\n".join(lines)
