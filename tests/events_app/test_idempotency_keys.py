"""Idempotency keys in their own table (IdempotencyKey): what each ingest path writes there, what
a replay answers once retention has deleted the event, the keys' own retention, and the
migration that moved them off the events table."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from bigmind.idempotency_settings import key_retention_days
from events_app.ingest.store import stored_events_by_key
from events_app.models import CrmRecord, Event, EventStatus, IdempotencyKey
from events_app.pipeline.processing import events_process
from events_app.retention import retention_purge
from signals_app.models import Signal
from tests.conftest import ApiClient, Tenant, on_postgres
from tests.locking import RolledBack, wait_for_a_lock_wait

DAY = timedelta(days=1)
URL = "/v1/events"
BODY = {"signal": "visit", "identity": {"type": "account", "id": "A1"}, "data": {"n": 1}}
OTHER_BODY = BODY | {"data": {"n": 2}}
THREADS = 8


@pytest.fixture
def short_retention(settings: Any) -> Any:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 10
    settings.BIGMIND_FAILED_EVENT_RETENTION_DAYS = 20
    settings.BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS = 30
    return settings


def post(api: ApiClient, body: dict[str, Any], key: str = "k-1") -> Any:
    return api.post(URL, body, **{"Idempotency-Key": key})


def batch(api: ApiClient, *items: dict[str, Any]) -> Any:
    return api.post(f"{URL}/batch", {"events": list(items)})


def stored_and_purged(api: ApiClient, body: dict[str, Any] = BODY, key: str = "k-1") -> str:
    """Store one keyed event, complete it, and let retention delete it (its key stays)."""
    response = post(api, body, key)
    assert response.status_code == 202, response.content
    event_id = response.json()["data"]["id"]
    events_process(event_ids=[event_id])
    retention_purge(now=timezone.now() + 11 * DAY)
    assert not Event.objects.filter(pk=event_id).exists()
    return str(event_id)


# --- What ingest writes -----------------------------------------------------------------------
def test_a_keyed_event_holds_its_key_with_what_a_replay_answers(
    api: ApiClient, tenant: Tenant, visit: Signal
) -> None:
    response = post(api, BODY | {"reference": "ref-1"})

    key = IdempotencyKey.objects.get()
    event = Event.objects.get()
    assert response.status_code == 202
    assert (key.event_id, key.organization_id, key.key) == (
        event.pk,
        tenant.organization.pk,
        "k-1",
    )
    assert (key.received_at, key.request_hash, key.schema_version, key.reference) == (
        event.received_at,
        event.request_hash,
        event.schema_version,
        "ref-1",
    )
    # The event keeps showing its key.
    assert event.idempotency_key == "k-1"


def test_an_event_without_a_key_holds_none(api: ApiClient, visit: Signal) -> None:
    assert api.post(URL, BODY).status_code == 202

    assert IdempotencyKey.objects.count() == 0


def test_a_batch_stores_its_items_keys_with_its_events(api: ApiClient, visit: Signal) -> None:
    response = batch(
        api,
        BODY | {"idempotency_key": "b-1"},
        OTHER_BODY,
        OTHER_BODY | {"idempotency_key": "b-2"},
    )

    assert response.status_code == 202, response.content
    ids = [item["id"] for item in response.json()["data"]]
    held = dict(IdempotencyKey.objects.values_list("key", "event_id"))
    assert {key: str(event_id) for key, event_id in held.items()} == {
        "b-1": ids[0],
        "b-2": ids[2],
    }


def test_a_batch_whose_key_another_request_stored_meanwhile_stores_nothing_twice(
    api: ApiClient, tenant: Tenant, visit: Signal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the batch's second pass is for: the key is taken between the batch's check and
    its insert. The key table's unique index refuses the insert, and the second pass answers
    the item as a replay of the event the other request stored."""
    from events_app.ingest import batch as batch_module

    settle = batch_module._settle_idempotency
    raced: list[str] = []

    def settle_then_lose_the_race(client: Any, items: Any) -> Any:
        to_insert = settle(client, items)
        if not raced:
            raced.append(post(api, BODY, key="b-1").json()["data"]["id"])
        return to_insert

    monkeypatch.setattr(batch_module, "_settle_idempotency", settle_then_lose_the_race)

    response = batch(api, BODY | {"idempotency_key": "b-1"}, OTHER_BODY)

    assert response.status_code == 202, response.content
    first, second = response.json()["data"]
    assert (first["id"], first["replayed"]) == (raced[0], True)
    assert "replayed" not in second
    assert Event.objects.count() == 2  # the racer's event and the batch's unkeyed item
    assert IdempotencyKey.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_single_and_batch_requests_with_one_key_store_exactly_one_event(
    tenant: Tenant,
) -> None:
    """The group statement's claim and the batch's insert race on the key table's unique
    index: whichever commits first stores the event, every other request answers its replay."""
    if not on_postgres():
        pytest.skip("needs real concurrent transactions: run with DATABASE_URL=postgres://...")
    tenant.signal("visit")
    barrier = threading.Barrier(THREADS)
    ids: list[str] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        client = ApiClient(tenant.raw_key)
        try:
            barrier.wait()
            if index % 2:
                response = batch(client, BODY | {"idempotency_key": "k-1"})
                event_id = response.json()["data"][0]["id"]
            else:
                response = post(client, BODY)
                event_id = response.json()["data"]["id"]
            assert response.status_code in (200, 202), response.content
            with lock:
                ids.append(event_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(ids) == THREADS
    assert len(set(ids)) == 1
    assert list(Event.objects.values_list("pk", flat=True)) == [uuid.UUID(ids[0])]
    assert list(IdempotencyKey.objects.values_list("pk", flat=True)) == [uuid.UUID(ids[0])]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_batch_waiting_on_a_key_holds_no_crm_record_lock(tenant: Tenant) -> None:
    """Lock order, made deterministic: the group statement claims its keys, then upserts its
    records. A batch must lock in the same order, or a group holding the key and a batch
    holding the record deadlock (PostgreSQL aborts one: a 503 for a request that did nothing
    wrong). Here this thread plays the group, between its two steps."""
    if not on_postgres():
        pytest.skip("needs real concurrent transactions: run with DATABASE_URL=postgres://...")
    tenant.signal("visit")
    answers: list[Any] = []

    def send_batch() -> None:
        try:
            answers.append(batch(ApiClient(tenant.raw_key), BODY | {"idempotency_key": "k-1"}))
        finally:
            connection.close()

    sender = threading.Thread(target=send_batch)
    with pytest.raises(RolledBack), transaction.atomic():
        IdempotencyKey.objects.create(
            event_id=uuid.uuid4(),
            organization_id=tenant.organization.pk,
            key="k-1",
            received_at=timezone.now(),
            request_hash="held",
        )
        sender.start()
        wait_for_a_lock_wait("the batch")
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '10s'")
            cursor.execute(
                f"""INSERT INTO "{CrmRecord._meta.db_table}"
                    ("organization_id", "type", "external_id", "first_seen_at", "last_seen_at")
                    VALUES (%s, 'account', 'A1', now(), now())
                    ON CONFLICT ("organization_id", "type", "external_id")
                    DO UPDATE SET "last_seen_at" = EXCLUDED."last_seen_at" """,  # noqa: S608
                [tenant.organization.pk],
            )
        raise RolledBack  # the "group" gives its key up: the batch may claim it
    sender.join(timeout=30)

    assert answers and answers[0].status_code == 202, answers and answers[0].content
    assert Event.objects.count() == 1


# --- A replay once the event is gone ------------------------------------------------------------
def test_a_replay_after_retention_deleted_the_event_answers_from_its_key(
    api: ApiClient, tenant: Tenant, visit: Signal, short_retention: Any
) -> None:
    event_id = stored_and_purged(api, BODY | {"reference": "ref-1"})

    replay = post(api, BODY | {"reference": "ref-1"})

    assert replay.status_code == 200, replay.content
    assert replay["Idempotent-Replayed"] == "true"
    assert replay["Location"] == f"/v1/events/{event_id}"
    data = replay.json()["data"]
    assert data == {
        "id": event_id,
        "signal_id": tenant.organization.signals.get().public_id,
        "schema_version": None,
        "status": "purged",
        "reference": "ref-1",
    }
    assert Event.objects.count() == 0  # nothing stored again


def test_a_different_request_with_a_purged_events_key_is_still_a_conflict(
    api: ApiClient, visit: Signal, short_retention: Any
) -> None:
    stored_and_purged(api)

    single = post(api, OTHER_BODY)
    in_batch = batch(api, OTHER_BODY | {"idempotency_key": "k-1"})
    validated = api.post(f"{URL}/validate", OTHER_BODY, **{"Idempotency-Key": "k-1"})

    assert single.status_code == 409
    assert single.json()["code"] == "idempotency_conflict"
    assert in_batch.json()["data"][0]["code"] == "idempotency_conflict"
    assert validated.status_code == 409
    assert Event.objects.count() == 0


def test_a_batch_replay_of_a_purged_event_answers_from_its_key(
    api: ApiClient, visit: Signal, short_retention: Any
) -> None:
    event_id = stored_and_purged(api)

    response = batch(api, BODY | {"idempotency_key": "k-1"})

    assert response.status_code == 202, response.content
    (item,) = response.json()["data"]
    assert (item["id"], item["status"], item["replayed"]) == (event_id, "purged", True)


def test_a_replay_while_the_event_exists_reports_its_status_now(
    api: ApiClient, visit: Signal
) -> None:
    event_id = post(api, BODY).json()["data"]["id"]
    events_process(event_ids=[event_id])

    replay = post(api, BODY)

    assert replay.status_code == 200
    assert (replay.json()["data"]["id"], replay.json()["data"]["status"]) == (
        event_id,
        EventStatus.COMPLETED,
    )


def test_the_events_holding_keys_are_looked_up_in_one_query_whatever_their_number(
    api: ApiClient, tenant: Tenant, visit: Signal, django_assert_num_queries: Any
) -> None:
    for n in range(5):
        post(api, BODY | {"data": {"n": n}}, key=f"k-{n}")
    events_process(event_ids=[Event.objects.get(idempotency_key="k-0").pk])

    with django_assert_num_queries(1):
        held = stored_events_by_key(
            organization_id=tenant.organization.pk, keys=[f"k-{n}" for n in range(6)]
        )

    assert sorted(held) == [f"k-{n}" for n in range(5)]
    assert held["k-0"].status == EventStatus.COMPLETED
    assert {held[f"k-{n}"].status for n in range(1, 5)} == {EventStatus.PENDING}


# --- The keys' own retention -------------------------------------------------------------------
def test_a_key_is_deleted_once_its_retention_has_passed_and_its_event_is_gone(
    api: ApiClient, visit: Signal, short_retention: Any
) -> None:
    event_id = stored_and_purged(api)

    kept = retention_purge(now=timezone.now() + 29 * DAY)
    held_after_29_days = IdempotencyKey.objects.filter(pk=event_id).exists()
    purged = retention_purge(now=timezone.now() + 31 * DAY)

    assert (kept.idempotency_keys, held_after_29_days) == (0, True)
    assert purged.idempotency_keys == 1
    assert IdempotencyKey.objects.count() == 0
    # The key is free again: a new event.
    again = post(api, BODY)
    assert again.status_code == 202
    assert again.json()["data"]["id"] != event_id


def test_a_key_outlives_its_retention_while_its_event_exists(
    api: ApiClient, visit: Signal, short_retention: Any
) -> None:
    # Never processed: `pending` events are never deleted, however old, nor their keys.
    event_id = post(api, BODY).json()["data"]["id"]

    result = retention_purge(now=timezone.now() + 365 * DAY)
    replay = post(api, BODY)

    assert result.idempotency_keys == 0
    assert (replay.status_code, replay.json()["data"]["id"]) == (200, event_id)
    assert replay.json()["data"]["status"] == EventStatus.PENDING


def test_keys_are_deleted_in_chunks_oldest_first(
    api: ApiClient, visit: Signal, short_retention: Any
) -> None:
    for n in range(5):
        post(api, BODY | {"data": {"n": n}}, key=f"k-{n}")
    events_process(event_ids=list(Event.objects.values_list("pk", flat=True)))
    short_retention.BIGMIND_RETENTION_CHUNK_SIZE = 2

    result = retention_purge(now=timezone.now() + 31 * DAY)

    assert (result.completed_events, result.idempotency_keys) == (5, 5)
    assert result.chunks == 3 + 3  # events: 2 + 2 + 1; keys: 2 + 2 + 1
    assert IdempotencyKey.objects.count() == 0


def test_keys_are_kept_forever_with_zero(api: ApiClient, visit: Signal, settings: Any) -> None:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 10
    settings.BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS = 0
    event_id = post(api, BODY).json()["data"]["id"]
    events_process(event_ids=[event_id])

    result = retention_purge(now=timezone.now() + 3650 * DAY)

    assert (result.completed_events, result.idempotency_keys) == (1, 0)
    assert result.cutoffs["idempotency_keys"] is None
    assert IdempotencyKey.objects.count() == 1


def test_purge_expired_reports_the_keys(
    api: ApiClient, visit: Signal, short_retention: Any
) -> None:
    stored_and_purged(api)
    # The command's own clock is now: make the key look 31 days old (its id as well, which is
    # the purge's index by time).
    old = timezone.now() - 31 * DAY
    key = IdempotencyKey.objects.get()
    IdempotencyKey.objects.filter(pk=key.pk).update(
        event_id=_uuid7_at(old, key.event_id), received_at=old
    )

    dry, real = StringIO(), StringIO()
    call_command("purge_expired", "--dry-run", stdout=dry)
    call_command("purge_expired", stdout=real)

    assert "idempotency keys: 1 would be deleted (dry run, nothing changed)" in dry.getvalue()
    assert "idempotency keys: 1 deleted" in real.getvalue()
    assert IdempotencyKey.objects.count() == 0


def _uuid7_at(at: Any, template: Any) -> Any:
    """`template` (a UUIDv7) with its time moved to `at`."""
    ms = int(at.timestamp() * 1000)
    return uuid.UUID(int=(ms << 80) | (template.int & ((1 << 80) - 1)))


# --- The setting -------------------------------------------------------------------------------
def _days(environ_value: str | None, completed: int = 90, failed: int = 180) -> int:
    env = environ.Env()
    variables = {} if environ_value is None else {"BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS": ""}
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS", raising=False)
        for name in variables:
            patch.setenv(name, str(environ_value))
        return key_retention_days(
            env,
            {
                "BIGMIND_EVENT_RETENTION_DAYS": completed,
                "BIGMIND_FAILED_EVENT_RETENTION_DAYS": failed,
            },
        )


def test_keys_are_kept_as_long_as_the_longest_kept_events_by_default() -> None:
    assert _days(None) == 180
    assert _days(None, completed=200, failed=30) == 200
    assert _days(None, completed=0) == 0  # events forever: keys forever
    assert _days(None, failed=0) == 0


def test_a_key_retention_of_at_least_the_events_or_zero_is_accepted() -> None:
    assert _days("180") == 180
    assert _days("400") == 400
    assert _days("0") == 0
    assert _days("0", completed=0) == 0


def test_a_key_retention_shorter_than_the_events_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="shorter than the events' retention"):
        _days("90")
    with pytest.raises(ImproperlyConfigured, match="kept forever"):
        _days("400", completed=0)


def test_start_up_stops_on_a_key_retention_shorter_than_the_events(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "BIGMIND_"))
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "bigmind.settings",
        "DJANGO_DEBUG": "true",
        "BIGMIND_VAR_DIR": str(tmp_path),
        "BIGMIND_EVENT_RETENTION_DAYS": "90",
        "BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS": "30",
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert (
        "BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS=30 is shorter than the events' retention (180"
        in (result.stderr)
    )


# --- The migration -----------------------------------------------------------------------------
MIGRATION = "0016_idempotency_keys"


@pytest.mark.django_db(transaction=True)
def test_the_migration_copies_every_key_to_the_key_table_in_chunks(
    tenant: Tenant, make_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back to 0015 (keys on the events), store keyed and unkeyed events of two organizations,
    then forward: every key is in the key table with its event's fields, and the events' unique
    index is gone. Chunks of 3 on PostgreSQL, so that the walk goes past a chunk's end."""
    module = importlib.import_module(f"events_app.migrations.{MIGRATION}")
    monkeypatch.setattr(module, "CHUNK_SIZE", 3)
    other = make_tenant("other")
    api, other_api = ApiClient(tenant.raw_key), ApiClient(other.raw_key)
    tenant.signal("visit")
    other.signal("visit")
    for n in range(4):
        post(api, BODY | {"data": {"n": n}}, key=f"k-{n}")
        post(other_api, BODY | {"data": {"n": n}}, key=f"k-{n}" if n < 3 else f"x-{n}")
    api.post(URL, OTHER_BODY)
    events = {event.pk: event for event in Event.objects.filter(idempotency_key__isnull=False)}
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([("events_app", "0015_event_invalid_index")])
        assert _has_events_unique_index()
        executor.loader.build_graph()
        executor.migrate([("events_app", MIGRATION)])

        copied = {key.event_id: key for key in IdempotencyKey.objects.all()}
        assert not _has_events_unique_index()
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("events_app"))

    assert len(events) == 8
    assert sorted(copied) == sorted(events)
    for event_id, key in copied.items():
        event = events[event_id]
        assert (key.organization_id, key.key, key.received_at, key.request_hash) == (
            event.organization_id,
            event.idempotency_key,
            event.received_at,
            event.request_hash,
        )
        assert (key.schema_version, key.reference) == (event.schema_version, event.reference)


def _has_events_unique_index() -> bool:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Event._meta.db_table)
    return "event_idempotency_key_unique_in_org" in constraints
