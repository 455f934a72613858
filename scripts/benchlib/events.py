"""What the benchmarks send, built the same way in Python and in wrk's Lua.

Two streams:
- the ingest endpoints' requests (`Endpoint`, `ENDPOINTS`): one kind of event per endpoint,
  a per-run, per-thread, per-event `reference`, identities cycling through a pool;
- the pipeline's mix (`event_dict`): the three demo signals in turn (type event, metric and
  state), three consecutive events sharing a CRM record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    signal: str
    data_template: str  # a JSON object; {n} becomes the event's sequence number
    auth: bool
    note: str
    batch_size: int = 0  # 0: the body is one event; n: {"events": [n events]}

    @property
    def events_per_request(self) -> int:
        return self.batch_size or 1

    def accepts(self, status: int) -> bool:
        """Whether an answer counts as a success (a batch only if every event was accepted)."""
        return status == 202 if self.batch_size else 200 <= status <= 299


PAGE_VISIT = '{{"page":"/docs/quickstart","duration_seconds":{n}}}'
ENDPOINTS = [
    Endpoint(
        "bare",
        "/bench/bare",
        "visited-documentation-page",
        PAGE_VISIT,
        auth=False,
        note="bigmind/bench.py: read body, json.loads, 202",
    ),
    Endpoint(
        "bare-insert",
        "/bench/bare-insert",
        "visited-documentation-page",
        PAGE_VISIT,
        auth=False,
        note="bigmind/bench.py: the bare view plus one autocommit INSERT of the body",
    ),
    Endpoint(
        "ingest",
        "/v1/events",
        "visited-documentation-page",
        PAGE_VISIT,
        auth=True,
        note="signal without schema",
    ),
    Endpoint(
        "ingest-schema",
        "/v1/events",
        "api-calls",
        '{{"value":{n}}}',
        auth=True,
        note="signal with JSON Schema v1 (required number `value`)",
    ),
    Endpoint(
        "ingest-batch",
        "/v1/events/batch",
        "visited-documentation-page",
        PAGE_VISIT,
        auth=True,
        note="100 events of `ingest`'s kind per request",
        batch_size=100,
    ),
]
# The governance benchmark (`make bench-governance`; signals in governance_signals.yaml): the
# same events to a plain signal and to one with enforcement `flag` and a redaction rule, plus
# events that fail the schema, which the flag signal accepts and marks invalid.
GOVERNED_EVENT = '{{"email":"bench-{n}@example.com","value":1}}'
GOVERNANCE_ENDPOINTS = [
    Endpoint(
        "ingest-plain",
        "/v1/events",
        "bench-plain",
        GOVERNED_EVENT,
        auth=True,
        note="schema (required email and number), enforcement reject, no redaction",
    ),
    Endpoint(
        "ingest-governed",
        "/v1/events",
        "bench-governed",
        GOVERNED_EVENT,
        auth=True,
        note="the same events and schema; enforcement flag, /email hashed",
    ),
    Endpoint(
        "ingest-flagged",
        "/v1/events",
        "bench-governed",
        '{{"email":"bench-{n}@example.com","value":"not a number"}}',
        auth=True,
        note="events failing the schema: accepted, flagged with their violation, /email hashed",
    ),
]
ENDPOINTS_BY_NAME = {e.name: e for e in [*ENDPOINTS, *GOVERNANCE_ENDPOINTS]}

# One event of an endpoint; the Lua of wrk is generated from the same template.
EVENT_TEMPLATE = (
    '{{"signal":"{signal}","version":"latest","identity":{{"type":"account","id":"{identity}"}},'
    '"data":{data},"reference":"{reference}"}}'
)


def body_for(endpoint: Endpoint, prefix: str, offset: int, first: int, identities: int) -> bytes:
    """The body of one request: events first, first + 1, ... (one, or a batch of them).

    Event n has reference `{prefix}-{n}`, identity number (offset + n) % identities and n in its
    data, exactly as in the wrk script, so a batch holds the events that consecutive
    single-event requests of the same connection would have sent.
    """
    events = [
        EVENT_TEMPLATE.format(
            signal=endpoint.signal,
            identity=f"acct-{(offset + n) % identities:06d}",
            data=endpoint.data_template.format(n=n),
            reference=f"{prefix}-{n}",
        )
        for n in range(first, first + endpoint.events_per_request)
    ]
    if not endpoint.batch_size:
        return events[0].encode()
    return ('{"events":[' + ",".join(events) + "]}").encode()


def endpoint_next_event_lua(endpoint: Endpoint) -> str:
    """Lua `next_event()` for loadgen.wrk_lua: body_for's events, thread `tid` at offset
    tid * 7919."""
    event_format = EVENT_TEMPLATE.format(
        signal=endpoint.signal,
        identity="%s",
        data=endpoint.data_template.format(n="%d"),
        reference="%s",
    )
    return f"""
-- format of one event; its %s/%d are, in this order: identity, data's number, reference
local event_format = '{event_format}'
local function next_event()
  counter = counter + 1
  local identity = string.format("acct-%06d", (tid * 7919 + counter) % identities)
  local reference = string.format("%s-%d-%d", run_id, tid, counter)
  return string.format(event_format, identity, counter, reference)
end
"""


# --- the pipeline's mix ----------------------------------------------------------------------
# Event n of a stream: type event, metric, state in turn (n % 3); three consecutive events share
# a CRM record, so every record gets all three types. Metric timestamps spread over the last
# 10 days (so earlier periods exist and some values, 1000 against 100-149, are unusual), state
# timestamps over the last 48 minutes (out of order: some are not newer than the stored state),
# event timestamps over the last 3 days. MIX_NEXT_EVENT_LUA builds the same events.
STATES = ("green", "yellow", "red")


def event_dict(n: int, identity: str, reference: str, now: int) -> dict[str, Any]:
    kind = n % 3
    if kind == 0:
        signal_slug = "visited-documentation-page"
        data: dict[str, Any] = {"page": f"/docs/p{n % 7}", "duration_seconds": n % 300}
        at = now - (n % 72) * 3600
    elif kind == 1:
        signal_slug = "api-calls"
        data = {"value": 1000 if n % 31 == 1 else 100 + (n * 37) % 50}
        at = now - (n % 10) * 86400
    else:
        signal_slug = "health-state"
        data = {"state": STATES[(n // 3) % 3]}
        at = now - (n % 48) * 60
    return {
        "signal": signal_slug,
        "version": "latest",
        "identity": {"type": "account", "id": identity},
        "data": data,
        "timestamp": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reference": reference,
    }


def identity_for(stream: int, n: int, identities: int) -> str:
    """The identity of event n of a stream of the mix: a new CRM record every three events."""
    return f"acct-{(stream * 7919 + n // 3) % identities:06d}"


# Lua `next_event()` for loadgen.wrk_lua: event_dict()'s events, thread `tid` as the stream.
MIX_NEXT_EVENT_LUA = """
local states = {"green", "yellow", "red"}
local now = os.time()
local function next_event()
  counter = counter + 1
  local n = counter
  local identity = string.format("acct-%06d", (tid * 7919 + math.floor(n / 3)) % identities)
  local reference = string.format("%s-%d-%d", run_id, tid, n)
  local kind = n % 3
  local slug, data, at
  if kind == 0 then
    slug = "visited-documentation-page"
    data = string.format('{"page":"/docs/p%d","duration_seconds":%d}', n % 7, n % 300)
    at = now - (n % 72) * 3600
  elseif kind == 1 then
    slug = "api-calls"
    local value = 100 + (n * 37) % 50
    if n % 31 == 1 then value = 1000 end
    data = string.format('{"value":%d}', value)
    at = now - (n % 10) * 86400
  else
    slug = "health-state"
    data = string.format('{"state":"%s"}', states[math.floor(n / 3) % 3 + 1])
    at = now - (n % 48) * 60
  end
  return string.format(
    '{"signal":"%s","version":"latest","identity":{"type":"account","id":"%s"},' ..
    '"data":%s,"timestamp":"%s","reference":"%s"}',
    slug, identity, data, os.date("!%Y-%m-%dT%H:%M:%SZ", at), reference)
end
"""
