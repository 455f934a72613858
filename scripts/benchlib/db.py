"""The benchmark's own look at the database: counting events, polling the pipeline's backlog,
and checking, after a run, that the pipeline did all its work exactly once."""

from __future__ import annotations

import os
from typing import Any

from benchlib.stack import Worker, broker_messages

ENGAGEMENT_EPOCH = "2025-01-01 00:00:00+00"  # events_app/pipeline/engagement.py EPOCH


class Db:
    """One autocommit connection of the benchmark's own, for polling and checks."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def __enter__(self) -> Db:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def events(self) -> int:
        return int(self.one("SELECT count(*) FROM events_app_event")[0])

    def events_by_run(self, run_id: str) -> dict[str, int]:
        """Events stored per run of a benchmark, from their references ({ref}-{thread}-{n})."""
        rows = self.conn.execute(
            "SELECT substring(reference from '^(.*)-[0-9.]+-[0-9]+$') AS ref, count(*) "
            "FROM events_app_event WHERE reference LIKE %s GROUP BY ref",
            (f"{run_id}-%",),
        ).fetchall()
        return {str(ref): int(count) for ref, count in rows if ref is not None}

    def backlog(self) -> int:
        # The (status, received_at) index answers this without touching completed rows.
        return int(
            self.one(
                "SELECT count(*) FROM events_app_event WHERE status IN ('pending', 'processing')"
            )[0]
        )

    def pending(self) -> int:
        return int(self.one("SELECT count(*) FROM events_app_event WHERE status = 'pending'")[0])

    def sample(self) -> tuple[int, int, int]:
        """(backlog, failed, all events) in one statement."""
        row = self.one(
            "SELECT count(*) FILTER (WHERE status IN ('pending', 'processing')), "
            "count(*) FILTER (WHERE status = 'failed'), count(*) FROM events_app_event"
        )
        return int(row[0]), int(row[1]), int(row[2])

    def phase(self, prefix: str) -> dict[str, Any]:
        """Counts and first/last completion of the events whose reference starts `prefix`-."""
        row = self.one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'completed'), "
            "count(*) FILTER (WHERE status = 'failed'), min(processed_at), max(processed_at) "
            "FROM events_app_event WHERE reference LIKE %s",
            (f"{prefix}-%",),
        )
        return {
            "stored": int(row[0]),
            "completed": int(row[1]),
            "failed": int(row[2]),
            "first": row[3],
            "last": row[4],
        }

    def close(self) -> None:
        self.conn.close()


# --- integrity -------------------------------------------------------------------------------
INTEGRITY_SQL = {
    "events": "SELECT count(*) FROM events_app_event",
    "completed": "SELECT count(*) FROM events_app_event WHERE status = 'completed'",
    "failed": "SELECT count(*) FROM events_app_event WHERE status = 'failed'",
    "not_done": "SELECT count(*) FROM events_app_event WHERE status IN ('pending', 'processing')",
    "claimed_more_than_once": "SELECT count(*) FROM events_app_event WHERE attempts <> 1",
    "without_rollup": "SELECT count(*) FROM events_app_event "
    "WHERE status = 'completed' AND (rollup IS NULL OR result IS NULL)",
    "event_type_events": "SELECT count(*) FROM events_app_event e "
    "JOIN signals_app_signal s ON s.id = e.signal_id WHERE s.type = 'event'",
    "event_insights": "SELECT count(*) FROM events_app_insight WHERE kind = 'event'",
    "insights_without_event": "SELECT count(*) FROM events_app_insight i "
    "LEFT JOIN events_app_event e ON e.id = i.event_id WHERE e.id IS NULL",
    "metric_events": "SELECT count(*) FROM events_app_event e "
    "JOIN signals_app_signal s ON s.id = e.signal_id WHERE s.type = 'metric'",
    "metric_count": "SELECT coalesce(sum(count), 0) FROM events_app_metricaggregate",
    "metric_value_sum": "SELECT coalesce(sum((e.data->>'value')::float8), 0) "
    "FROM events_app_event e JOIN signals_app_signal s ON s.id = e.signal_id "
    "WHERE s.type = 'metric'",
    "metric_aggregate_sum": "SELECT coalesce(sum(sum), 0) FROM events_app_metricaggregate",
    "metric_unusual_insights": "SELECT count(*) FROM events_app_insight "
    "WHERE kind = 'metric_unusual'",
    "state_change_insights": "SELECT count(*) FROM events_app_insight WHERE kind = 'state_change'",
    # The current state of each (record, state signal) is its newest event, by (timestamp, id).
    "wrong_states": """
        SELECT count(*) FROM (
            SELECT DISTINCT ON (e.crm_record_id, e.signal_id)
                   e.crm_record_id, e.signal_id, e.id
            FROM events_app_event e JOIN signals_app_signal s ON s.id = e.signal_id
            WHERE s.type = 'state'
            ORDER BY e.crm_record_id, e.signal_id, e.timestamp DESC, e.id DESC
        ) latest
        FULL JOIN events_app_recordstate r
               ON r.crm_record_id = latest.crm_record_id AND r.signal_id = latest.signal_id
        WHERE r.event_id IS DISTINCT FROM latest.id
    """,
    # Each record's engagement mass is the sum of its events' weights, each scaled by
    # 2^((timestamp - epoch) / half-life) (events_app/pipeline/engagement.py), counted once.
    "wrong_engagement": """
        SELECT count(*) FROM events_app_crmrecord c LEFT JOIN (
            SELECT crm_record_id, sum(
                coalesce((rollup->'engagement'->>'weight')::float8, 0)
                * power(2::float8, extract(epoch FROM (timestamp - %s::timestamptz))
                                   / (%s * 86400.0))
            ) AS expected
            FROM events_app_event GROUP BY crm_record_id
        ) x ON x.crm_record_id = c.id
        WHERE abs(c.engagement_mass - coalesce(x.expected, 0))
              > 1e-9 * greatest(1, abs(coalesce(x.expected, 0)))
    """,
    "records": "SELECT count(*) FROM events_app_crmrecord",
    # The status history, where the pipeline keeps one (events_app_eventtransition): exactly
    # one `completed` step per event.
    "not_completed_once": """
        SELECT CASE WHEN to_regclass('events_app_eventtransition') IS NULL THEN -1 ELSE (
            SELECT count(*) FROM events_app_event e
            LEFT JOIN (SELECT event_id, count(*) AS n FROM events_app_eventtransition
                       WHERE status = 'completed' GROUP BY event_id) t ON t.event_id = e.id
            WHERE coalesce(t.n, 0) <> 1
        ) END
    """,
}


def integrity(db: Db, broker: Any, workers: list[Worker]) -> list[str]:
    """After a run of the pipeline, every event of the database: lines `OK ...` or `FAILED ...`."""
    half_life = float(os.environ.get("BIGMIND_ENGAGEMENT_HALF_LIFE_DAYS", "14"))
    got: dict[str, float] = {}
    for name, sql in INTEGRITY_SQL.items():
        params = (ENGAGEMENT_EPOCH, half_life) if "%s" in sql else ()
        got[name] = float(db.one(sql, params)[0])
    waiting, unacked = broker_messages(broker)
    errors = [line for w in workers for line in w.log_errors()]

    def check(ok: bool, text: str) -> str:
        return f"{'OK' if ok else 'FAILED'}: {text}"

    n = int(got["events"])
    return [
        check(
            got["completed"] == n and got["failed"] == 0 and got["not_done"] == 0,
            f"{n} events stored, {got['completed']:.0f} completed, {got['failed']:.0f} failed, "
            f"{got['not_done']:.0f} pending or processing",
        ),
        check(
            got["not_completed_once"] <= 0,
            "status history: "
            + (
                "no events_app_eventtransition table"
                if got["not_completed_once"] < 0
                else f"{got['not_completed_once']:.0f} events without exactly one `completed` step"
            ),
        ),
        check(
            got["claimed_more_than_once"] == 0 and got["without_rollup"] == 0,
            f"every event claimed exactly once (attempts = 1; {got['claimed_more_than_once']:.0f}"
            f" otherwise) and completed with its result and rollup "
            f"({got['without_rollup']:.0f} without)",
        ),
        check(
            got["event_insights"] == got["event_type_events"]
            and got["insights_without_event"] == 0,
            f"one insight per type-event event: {got['event_insights']:.0f} insights for "
            f"{got['event_type_events']:.0f} events; also {got['metric_unusual_insights']:.0f} "
            f"unusual-metric and {got['state_change_insights']:.0f} state-change insights",
        ),
        check(
            got["metric_count"] == got["metric_events"]
            and abs(got["metric_aggregate_sum"] - got["metric_value_sum"])
            <= 1e-9 * max(1.0, got["metric_value_sum"]),
            f"metric aggregates count {got['metric_count']:.0f} values for "
            f"{got['metric_events']:.0f} metric events; sum {got['metric_aggregate_sum']:.0f} "
            f"against {got['metric_value_sum']:.0f}",
        ),
        check(
            got["wrong_states"] == 0,
            f"record states: {got['wrong_states']:.0f} (record, signal) pairs whose state is "
            "not their newest event",
        ),
        check(
            got["wrong_engagement"] == 0,
            f"engagement: {got['wrong_engagement']:.0f} of {got['records']:.0f} CRM records "
            "whose engagement mass differs from the sum of their events' weights",
        ),
        check(
            waiting == 0 and unacked == 0,
            f"broker: {waiting} messages waiting, {unacked} unacknowledged",
        ),
        check(
            not errors,
            f"worker logs: {len(errors)} error lines"
            + (f", first: {errors[0][:200]}" if errors else ""),
        ),
    ]
