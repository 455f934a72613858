"""Migration 0017 on an existing deployment: a database at 0016 holding a million events, its plain
events table converted to range partitions in chunks while a writer inserts, updates and deletes
events, every row, its status and its data kept (events_app/partitions/conversion.py)."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from tests.conftest import on_postgres
from tests.harness import database_url, manage

pytestmark = pytest.mark.postgres

ROWS = 1_000_000
# The events as the old release stored them: deterministic, so what the table must hold after the
# conversion can be computed again from this query. Event i was received 30 s after event i-1,
# from June 2025 on: about 12 months, so 12 or 13 monthly partitions.
GENERATED = """
    SELECT md5('event-' || i)::uuid AS id, %(org)s::bigint AS organization_id,
           %(signal)s::bigint AS signal_id, NULL::integer AS schema_version,
           (%(records)s::bigint[])[1 + i %% 50] AS crm_record_id,
           'account' AS identity_type, 'A' || (i %% 50) AS identity_id,
           jsonb_build_object('n', i, 'page', '/docs/' || (i %% 97)) AS data, t AS timestamp,
           t AS received_at, 'ref-' || i AS reference, NULL AS idempotency_key,
           repeat('0', 64) AS request_hash,
           (ARRAY['completed', 'failed', 'pending'])[1 + i %% 3] AS status, 1 AS attempts,
           '' AS last_error, NULL::jsonb AS result, NULL::timestamptz AS processed_at,
           NULL::timestamptz AS claimed_at, NULL::timestamptz AS due_at, NULL::jsonb AS rollup,
           true AS schema_valid, NULL::jsonb AS violations
    FROM (
        SELECT i, timestamptz '2025-06-01 00:00:00+00' + i * interval '30 seconds' AS t
        FROM generate_series(1, %(rows)s) AS i
    ) AS series
"""
COLUMNS = (
    "id, organization_id, signal_id, schema_version, crm_record_id, identity_type, identity_id, "
    "data, timestamp, received_at, reference, idempotency_key, request_hash, status, attempts, "
    "last_error, result, processed_at, claimed_at, due_at, rollup, schema_valid, violations"
)
# One number for a set of rows: what must survive of each (status, data, times, reference).
FINGERPRINT = """
    SELECT count(*), coalesce(sum(hashtextextended(
        id::text || status || data::text || received_at::text || timestamp::text
        || reference || crm_record_id::text || attempts::text, 0)::numeric), 0)
    FROM ({source}) AS rows WHERE NOT (id = ANY(%(touched)s::uuid[]))
"""

SEED = """
from django.utils import timezone
from events_app.models import CrmRecord
from signals_app.services import organization_get_or_create, signal_create
org, _ = organization_get_or_create(slug="big")
signal = signal_create(organization=org, name="Visit", slug="visit", type="event")
now = timezone.now()
records = CrmRecord.objects.bulk_create(
    CrmRecord(organization=org, type="account", external_id=f"A{n}", first_seen_at=now,
              last_seen_at=now)
    for n in range(50)
)
print("SEEDED", org.pk, signal.pk, ",".join(str(r.pk) for r in records))
"""


def _admin(params: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(dbname="postgres", autocommit=True, **params)


@pytest.fixture
def old_deployment(db: None) -> Iterator[tuple[str, dict[str, str]]]:
    """A database of its own, migrated to 0016 (the unpartitioned layout)."""
    if not on_postgres():
        pytest.skip("the events table is partitioned on PostgreSQL only")
    settings_dict = dict(connection.settings_dict)
    settings_dict["NAME"] = f"{settings_dict['NAME']}_conversion"
    name = settings_dict["NAME"]
    params = {
        key: value
        for key, value in {
            "host": settings_dict.get("HOST") or "127.0.0.1",
            "port": settings_dict.get("PORT") or None,
            "user": settings_dict.get("USER") or None,
            "password": settings_dict.get("PASSWORD") or None,
        }.items()
        if value
    }
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _admin(params) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(settings_dict)
    env = dict(os.environ, DATABASE_URL=url)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    try:
        manage("migrate", "-v0", "events_app", "0016", env=env)
        yield url, env
    finally:
        with _admin(params) as admin:
            admin.execute(drop)


class Writer(threading.Thread):
    """What a live deployment does during the conversion: new events arrive, workers change the
    status and data of old ones, and (rarely) events are deleted."""

    def __init__(self, url: str, ids: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids = ids
        self.stop = threading.Event()
        self.inserted: list[str] = []
        self.updated: dict[int, int] = {}  # event number -> the writer's step that wrote it last
        self.deleted: set[int] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(16)
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                step = 0
                while not self.stop.is_set():
                    step += 1
                    new_id = conn.execute(
                        f"INSERT INTO events_app_event ({COLUMNS}) "  # noqa: S608
                        "SELECT md5('new-' || %(step)s)::uuid, organization_id, signal_id, "
                        "schema_version, crm_record_id, identity_type, identity_id, "
                        "jsonb_build_object('new', %(step)s), now(), now(), 'new-' || %(step)s, "
                        "NULL, request_hash, 'pending', 0, '', NULL, NULL, NULL, NULL, NULL, "
                        "true, NULL FROM events_app_event WHERE id = md5('event-1')::uuid "
                        "RETURNING id",
                        {"step": step},
                    ).fetchone()
                    assert new_id is not None
                    self.inserted.append(str(new_id[0]))
                    n = rng.randint(2, ROWS)
                    if step % 10 == 0 and n not in self.updated:
                        conn.execute(
                            "DELETE FROM events_app_event WHERE id = md5('event-' || %s)::uuid",
                            [n],
                        )
                        self.deleted.add(n)
                    elif n not in self.deleted:
                        conn.execute(
                            "UPDATE events_app_event SET status = 'completed', "
                            "attempts = attempts + 1, data = jsonb_build_object('updated', %s) "
                            "WHERE id = md5('event-' || %s)::uuid",
                            [step, n],
                        )
                        self.updated[n] = step
                    time.sleep(0.005)
        except BaseException as exc:  # reported by the test
            self.error = exc


def _seed(env: dict[str, str]) -> dict[str, Any]:
    out = manage("shell", "-c", SEED, env=env)
    [line] = [line for line in out.splitlines() if line.startswith("SEEDED ")]
    _, org, signal, records = line.split()
    return {"org": int(org), "signal": int(signal), "records": [int(r) for r in records.split(",")]}


def test_an_operator_converts_out_of_band_and_migrate_then_only_records_0017(
    old_deployment: tuple[str, dict[str, str]],
) -> None:
    url, env = old_deployment
    params = _seed(env) | {"rows": 5000}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO events_app_event ({COLUMNS}) {GENERATED}", params)
        expected = conn.execute(
            FINGERPRINT.format(source=GENERATED), params | {"touched": []}
        ).fetchone()

        # What a run stopped before its swap leaves: the next one starts again from scratch.
        conn.execute("CREATE TABLE events_app_event_new (id uuid)")
        conn.execute("CREATE TABLE events_app_event_changes (seq bigserial, id uuid)")

        out = manage("event_partitions", "--convert", env=env)

        assert "converted: 5000 events copied, 0 caught up" in out
        assert "events_app_event_p20250601_20250701  2025-06-01 00:00 to 2025-07-01 00:00" in out
        migrated = manage("migrate", env=env)
        assert "Applying events_app.0017_partition_events... OK" in migrated
        assert "copied" not in migrated  # nothing left to convert
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'events_app_event'"
        ).fetchone() == ("p",)
        # No foreign key points at the events any more (EventTransition's was dropped).
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE confrelid = 'events_app_event'::regclass"
        ).fetchone() == (0,)
        actual = conn.execute(
            FINGERPRINT.format(source="SELECT * FROM events_app_event"), {"touched": []}
        ).fetchone()
        assert actual == expected and expected is not None and expected[0] == 5000

        # Back to 0016 (development databases): one plain table with the same rows, and
        # EventTransition's key to it again; then forward once more.
        manage("migrate", "events_app", "0016", env=env)
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'events_app_event'"
        ).fetchone() == ("r",)
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE confrelid = 'events_app_event'::regclass"
        ).fetchone() == (1,)
        assert (
            conn.execute(
                FINGERPRINT.format(source="SELECT * FROM events_app_event"), {"touched": []}
            ).fetchone()
            == expected
        )
        manage("migrate", env=env)
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'events_app_event'"
        ).fetchone() == ("p",)


@pytest.mark.slow
def test_the_conversion_of_a_million_events_keeps_every_row_written_before_and_during_it(
    old_deployment: tuple[str, dict[str, str]],
) -> None:
    url, env = old_deployment
    out = manage("shell", "-c", SEED, env=env)
    [line] = [line for line in out.splitlines() if line.startswith("SEEDED ")]
    _, org, signal, records = line.split()
    params = {
        "org": int(org),
        "signal": int(signal),
        "records": [int(r) for r in records.split(",")],
    }
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        conn.execute(
            f"INSERT INTO events_app_event ({COLUMNS}) {GENERATED}",
            params | {"rows": ROWS},
        )
        conn.execute("ANALYZE events_app_event")
        filled = time.monotonic() - started
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'events_app_event'"
        ).fetchone() == ("r",)

    writer = Writer(url, params)
    writer.start()
    started = time.monotonic()
    try:
        output = manage("migrate", env=env)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    converted = time.monotonic() - started
    assert writer.error is None, writer.error
    print(f"filled {ROWS} events in {filled:.1f} s; migrate took {converted:.1f} s\n{output}")

    # The writer ran throughout the conversion, and its changes were caught up.
    assert len(writer.inserted) > 20 and len(writer.updated) > 20 and writer.deleted
    done = re.search(r"converted: (\d+) events copied, (\d+) caught up", output)
    assert done is not None, output
    assert int(done[1]) >= ROWS and int(done[2]) > 0

    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'events_app_event'"
        ).fetchone() == ("p",)
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname = ANY(%s)",
            [
                [
                    "events_app_event_unpartitioned",
                    "events_app_event_new",
                    "events_app_event_changes",
                ]
            ],
        ).fetchone() == (0,)
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events_app_event'::regclass"
        ).fetchone()
        assert partitions is not None and partitions[0] >= 13 + 1  # a year of months, default
        # Nothing went to the default partition: every row has its month's partition.
        assert conn.execute("SELECT count(*) FROM events_app_event_default").fetchone() == (0,)

        touched = [
            row[0]
            for row in conn.execute(
                "SELECT md5('event-' || n)::text FROM unnest(%s::int[]) AS n",
                [sorted(set(writer.updated) | writer.deleted)],
            ).fetchall()
        ]
        kept_query = "SELECT * FROM events_app_event"
        expected = conn.execute(
            FINGERPRINT.format(source=GENERATED), params | {"rows": ROWS, "touched": touched}
        ).fetchone()
        actual = conn.execute(
            FINGERPRINT.format(source=kept_query + " WHERE reference LIKE 'ref-%%'"),
            {"touched": touched},
        ).fetchone()
        assert expected is not None and expected[0] == ROWS - len(touched)
        assert actual == expected

        for n, step in writer.updated.items():
            row = conn.execute(
                "SELECT status, data FROM events_app_event WHERE id = md5('event-' || %s)::uuid",
                [n],
            ).fetchone()
            assert row == ("completed", {"updated": step}), n
        assert conn.execute(
            "SELECT count(*) FROM events_app_event WHERE id = ANY(%s::uuid[])",
            [[str(n) for n in writer.inserted]],
        ).fetchone() == (len(writer.inserted),)
        assert conn.execute(
            "SELECT count(*) FROM events_app_event WHERE id IN "
            "(SELECT md5('event-' || n)::uuid FROM unnest(%s::int[]) AS n)",
            [sorted(writer.deleted)],
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM events_app_event").fetchone() == (
            ROWS + len(writer.inserted) - len(writer.deleted),
        )
