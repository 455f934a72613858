"""Property tests on generated requests, through the whole Django stack with a real API key.

tests/events_app/test_ingest_fuzz.py proves "no 5xx" for JSON values, bytes and headers. These
tests go further on every write endpoint and the reads: every answer is the JSON envelope, a
4xx carries a `code`, a 202 stored the event exactly once and what was stored passes its
schema, a resent request with an idempotency key is a replay, and a refusal stored nothing.
Every request is counted (tests/abuse/conftest.py); each test checks that it sent its share.

Reproducible by default: `derandomize=True` derives each test's examples from the test, so a
CI failure is the same failure on a laptop, and CI (which gates landing) cannot fail at random
on a change that did not touch the API. The randomness that finds new inputs run after run is
schemathesis's in `make api-fuzz` (random seed) and `BIGMIND_FUZZ_RANDOM=1` locally.
`BIGMIND_FUZZ_SCALE` multiplies the number of examples (0.1 for a quick look, 10 for a soak).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from events_app.models import CrmRecord, Event
from signals_app.schemas import schema_compile
from tests.abuse import strategies as fuzz
from tests.abuse.conftest import GENERATED_REQUESTS
from tests.conftest import Tenant

# Slow (a minute of CPU between them); each checks its own share, so xdist may spread them.
pytestmark = pytest.mark.slow

SCALE = float(os.environ.get("BIGMIND_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("BIGMIND_FUZZ_RANDOM", "") == "1"
# Examples per test; each sends at least one request (an accepted event is sent twice).
EXAMPLES = {
    "events": 1800,
    "batch": 700,
    "validate": 1200,
    "reads": 1400,
}


def fuzz_settings(name: str) -> settings:
    return settings(
        max_examples=max(1, int(EXAMPLES[name] * SCALE)),
        deadline=None,
        derandomize=not RANDOM,
        database=None if not RANDOM else settings.default.database,
        # No shrinking in CI: each step is a request, and a failure shrinks for minutes. The
        # failing example is printed as found; BIGMIND_FUZZ_RANDOM=1 runs shrink it.
        phases=list(Phase) if RANDOM else [Phase.explicit, Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


class _ErrorLog(logging.Handler):
    """Errors logged while the app answers: a swallowed exception is a failure too."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log() -> Iterator[_ErrorLog]:
    handler = _ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
def fuzz_tenant(tenant: Tenant) -> Tenant:
    tenant.signal(fuzz.OPEN_SIGNAL, rate_limit_per_minute=10**9)
    tenant.signal(fuzz.SCHEMA_SIGNAL, rate_limit_per_minute=10**9, schema=fuzz.SCHEMA)
    return tenant


VALIDATOR = schema_compile(fuzz.SCHEMA)


def send(
    tenant: Tenant, method: str, path: str, body: bytes = b"", *, endpoint: str, **headers: str
) -> tuple[int, dict[str, Any]]:
    """One request through the test client; checks the envelope, counts it."""
    client = Client()
    response = client.generic(
        method,
        path,
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {tenant.raw_key}", **headers},
    )
    status = response.status_code
    GENERATED_REQUESTS[(endpoint, status)] += 1
    assert status < 500, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    envelope = json.loads(response.content)
    assert isinstance(envelope, dict) and isinstance(envelope.get("success"), bool), envelope
    if status >= 400:
        assert envelope["success"] is False
        assert isinstance(envelope.get("error"), str) and envelope["error"], envelope
        assert isinstance(envelope.get("code"), str) and envelope["code"], envelope
    else:
        assert "data" in envelope, envelope
    assert response.has_header("X-Request-ID")
    return status, envelope


def counts() -> tuple[int, int]:
    return Event.objects.count(), CrmRecord.objects.count()


def assert_stored_as_sent(event_id: str, sent: dict[str, Any]) -> None:
    """The stored event is the one sent, and its data passes the schema of its signal."""
    event = Event.objects.select_related("signal").get(id=event_id)
    assert event.signal.slug == sent["signal"]
    assert event.identity_type == sent["identity"]["type"]
    assert event.identity_id == sent["identity"]["id"]
    assert same_json(event.data, sent.get("data") or {}), (event.data, sent.get("data"))
    if event.signal.slug == fuzz.SCHEMA_SIGNAL:
        assert event.schema_version == 1
        assert VALIDATOR.is_valid(event.data), event.data
    else:
        assert event.schema_version is None


def same_json(stored: Any, sent: Any) -> bool:
    """Equal as JSON: PostgreSQL's jsonb keeps numbers as decimals, so 4.008336720017854e+16
    comes back as the integer 40083367200178540, the same JSON number (the same double)."""
    if isinstance(sent, bool) or isinstance(stored, bool):
        return stored is sent
    if isinstance(sent, int | float) and isinstance(stored, int | float):
        if isinstance(sent, int) and isinstance(stored, int):
            return sent == stored
        return float(sent) == float(stored)
    if isinstance(sent, dict) and isinstance(stored, dict):
        return sent.keys() == stored.keys() and all(same_json(stored[k], sent[k]) for k in sent)
    if isinstance(sent, list) and isinstance(stored, list):
        return len(sent) == len(stored) and all(map(same_json, stored, sent))
    return bool(stored == sent)


def no_errors_logged(error_log: _ErrorLog) -> None:
    assert not error_log.records, [record.getMessage() for record in error_log.records]


@fuzz_settings("events")
@given(case=fuzz.bodies(), resend=st.booleans())
def test_generated_event_bodies_are_stored_once_or_not_at_all(
    fuzz_tenant: Tenant, error_log: _ErrorLog, case: tuple[str, bytes], resend: bool
) -> None:
    _, raw = case
    before = counts()
    status, envelope = send(fuzz_tenant, "POST", "/v1/events", raw, endpoint="POST /v1/events")
    after = counts()
    if status == 202:
        sent = json.loads(raw)
        assert after[0] == before[0] + 1
        assert after[1] - before[1] in (0, 1)
        assert_stored_as_sent(envelope["data"]["id"], sent)
        if resend:
            again, replay = send(fuzz_tenant, "POST", "/v1/events", raw, endpoint="POST /v1/events")
            if sent.get("idempotency_key"):
                assert again == 200 and replay["data"]["id"] == envelope["data"]["id"]
                assert counts() == after
            else:
                # No key, no deduplication: a second event, as documented.
                assert again == 202 and replay["data"]["id"] != envelope["data"]["id"]
                assert counts()[0] == after[0] + 1
    elif status == 200:
        # An idempotent replay of an event stored by an earlier example.
        assert after == before
        assert Event.objects.filter(id=envelope["data"]["id"]).exists()
    else:
        assert 400 <= status < 500
        assert after == before, f"a {status} stored something"
    no_errors_logged(error_log)


@fuzz_settings("batch")
@given(case=fuzz.bodies(top=fuzz.batches()))
def test_generated_batches_store_exactly_the_accepted_items(
    fuzz_tenant: Tenant, error_log: _ErrorLog, case: tuple[str, bytes]
) -> None:
    _, raw = case
    before = counts()
    status, envelope = send(
        fuzz_tenant, "POST", "/v1/events/batch", raw, endpoint="POST /v1/events/batch"
    )
    after = counts()
    if status in (202, 207):
        items = json.loads(raw)["events"]
        slots = envelope["data"]
        assert [slot["index"] for slot in slots] == list(range(len(items)))
        accepted = [slot for slot in slots if slot.get("status") != "rejected"]
        rejected = [slot for slot in slots if slot.get("status") == "rejected"]
        assert (status == 202) is (not rejected) is envelope["success"]
        for slot in rejected:
            assert isinstance(slot["code"], str) and slot["code"]
            assert 400 <= slot["status_code"] < 500
        new = [slot for slot in accepted if not slot.get("replayed")]
        # Each stored once: as many new rows as new slots, and each id a distinct row.
        assert after[0] == before[0] + len(new)
        assert len({slot["id"] for slot in new}) == len(new)
        for slot in accepted:
            assert_stored_as_sent(slot["id"], items[slot["index"]])
    else:
        assert 400 <= status < 500
        assert after == before, f"a {status} stored something"
    no_errors_logged(error_log)


@fuzz_settings("validate")
@given(case=fuzz.bodies())
def test_generated_bodies_sent_to_validate_never_store_anything(
    fuzz_tenant: Tenant, error_log: _ErrorLog, case: tuple[str, bytes]
) -> None:
    _, raw = case
    before = counts()
    status, envelope = send(
        fuzz_tenant, "POST", "/v1/events/validate", raw, endpoint="POST /v1/events/validate"
    )
    assert counts() == before
    if status == 200:
        assert envelope["data"]["valid"] is True
        sent = json.loads(raw)
        if sent["signal"] == fuzz.SCHEMA_SIGNAL:
            assert VALIDATOR.is_valid(sent.get("data") or {})
    else:
        assert 400 <= status < 500
    no_errors_logged(error_log)


LIST_PATHS = ["/v1/events", "/v1/rejections", "/v1/signals"]


@st.composite
def read_paths(draw: st.DrawFn) -> tuple[str, str]:
    """(label for the counter, path with query string)."""
    kind = draw(st.sampled_from(["list", "list", "list", "detail"]))
    if kind == "list":
        path = draw(st.sampled_from(LIST_PATHS))
        return path, path + "?" + draw(fuzz.query_strings())
    template = draw(
        st.sampled_from(
            ["/v1/events/{}", "/v1/signals/{}", "/v1/signals/{}/schemas/{}", "/v1/records/{}/{}"]
        )
    )
    segments = [draw(fuzz.path_segments()) for _ in range(template.count("{}"))]
    label = template.replace("{}", "*")
    return label, template.format(*segments) + "?" + draw(fuzz.query_strings())


@fuzz_settings("reads")
@given(case=read_paths())
def test_generated_query_strings_and_paths_never_break_the_reads(
    fuzz_tenant: Tenant, error_log: _ErrorLog, case: tuple[str, str]
) -> None:
    label, path = case
    before = counts()
    status, envelope = send(fuzz_tenant, "GET", path, endpoint="GET " + label)
    assert counts() == before
    assert status in (200, 400, 404), (status, envelope)
    if status == 200 and label in LIST_PATHS:
        assert isinstance(envelope["data"], list)
    no_errors_logged(error_log)


# Which examples budget each property test runs on, and the answers its generators must reach at
# full size (BIGMIND_FUZZ_SCALE=1): acceptance as well as every kind of refusal, or they prove
# little. A quick BIGMIND_FUZZ_SCALE=0.1 run may miss a rare answer, so it checks only the count.
BUDGETS = {
    "test_generated_event_bodies_are_stored_once_or_not_at_all": (
        "events",
        {200, 202, 400, 404, 409},
    ),
    "test_generated_batches_store_exactly_the_accepted_items": ("batch", {202, 207, 400}),
    "test_generated_bodies_sent_to_validate_never_store_anything": ("validate", {200, 400, 404}),
    "test_generated_query_strings_and_paths_never_break_the_reads": ("reads", {200, 400, 404}),
}
assert sum(EXAMPLES.values()) >= 5000, "the suite promises at least 5,000 generated requests"


@pytest.fixture(autouse=True)
def _sent_its_share(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each property test sends at least one request per example of its budget (so the four send
    at least 5,000 between them) and reaches its answers. Checked per test rather than summed over
    the module, so that pytest-xdist may run the four on different processes."""
    before = GENERATED_REQUESTS.copy()
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        return  # the failure speaks for itself; a short count after it would only add noise
    budget, reaches = BUDGETS[request.node.name]
    sent = GENERATED_REQUESTS - before
    total = sum(sent.values())
    required = max(1, int(EXAMPLES[budget] * SCALE))
    assert total >= required, f"only {total} generated requests, {required} required"
    if SCALE >= 1:
        statuses = {status for (_, status) in sent}
        assert reaches <= statuses, f"never answered {sorted(reaches - statuses)}: {sent}"
