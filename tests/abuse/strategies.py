"""Hypothesis strategies for the abuse suite: request bodies as bytes, and query strings.

A body is drawn as one of several kinds, so that every layer gets its share: event envelopes
that are valid or one mutation away from valid (they reach the schema check and the insert),
random JSON values, random bytes, random text, JSON with numbers no double can hold spliced in
(1e400, 5,000-digit integers, NaN), bodies cut short, a BOM in front, nesting around 32 levels.
Strings come from the whole of Unicode, lone surrogates included: `json.dumps` escapes them
(`\\ud800`), and the "raw" encodings write them as the bytes `surrogatepass` gives (not UTF-8).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

OPEN_SIGNAL = "open"
SCHEMA_SIGNAL = "schemaed"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "number", "maximum": 10},
        "s": {"type": "string", "pattern": "^a"},
        # multipleOf on a huge integer overflows a float inside jsonschema: refused, not a 500.
        "m": {"type": "integer", "multipleOf": 7},
    },
    "additionalProperties": {"type": ["string", "number", "object", "array", "boolean"]},
}
IDEMPOTENCY_KEYS = ["k-1", "k-2", "k-3", "key with spaces", "ключ"]
# Raw JSON number texts no double holds, or that JSON does not allow; spliced in after dumps.
RAW_NUMBERS = [
    "1e400",
    "-1e400",
    "1E+309",
    "4.9e-325",
    "1" * 5000,
    "-" + "9" * 4301,
    "9" * 4300,
    "NaN",
    "Infinity",
    "-Infinity",
    "0" * 3 + "1",
    "1.",
    ".5",
    "0x10",
    "+1",
]

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
huge_ints = st.sampled_from([2**53 + 1, 2**63, -(2**63) - 1, 10**30, -(10**300), 2**1000])
special_floats = st.sampled_from([1e308, -1e308, 5e-324, -0.0, 2.0**-1074, 1.7976931348623157e308])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | huge_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | special_floats
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event for one of the fuzz signals, then zero or more fields mutated."""
    signal = draw(st.sampled_from([OPEN_SIGNAL, SCHEMA_SIGNAL]))
    if signal == SCHEMA_SIGNAL:
        data = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "n": st.integers(max_value=10) | st.floats(max_value=10, allow_nan=False),
                    "s": st.text(max_size=20).map(lambda text: "a" + text),
                    "m": st.integers(-(10**6), 10**6).map(lambda n: n * 7),
                    "extra": st.text(max_size=20) | st.integers(),
                },
            )
        )
    else:
        data = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
    body: dict[str, Any] = {
        "signal": signal,
        "identity": {
            "type": draw(st.sampled_from(["account", "contact", "deal", "lead", "custom_x"])),
            "id": draw(st.text(min_size=1, max_size=40).filter(str.strip)),
        },
        "data": data,
    }
    optional = {
        "version": st.sampled_from(["latest", 1, 1.0]),
        "timestamp": st.sampled_from(
            ["2026-03-16T12:00:00Z", "2025-01-01T00:00:00+05:30", "2020-02-29T23:59:59.999999"]
        ),
        "reference": st.text(max_size=40),
        "idempotency_key": st.sampled_from(IDEMPOTENCY_KEYS),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    # Mutations: a field replaced by anything, deleted, or the wrong type; a field added.
    fields = ["signal", "identity", "data", "version", "timestamp", "reference", "idempotency_key"]
    mutated = draw(st.lists(st.sampled_from(fields), max_size=3, unique=True))
    if draw(st.integers(min_value=0, max_value=2)):
        mutated = []  # two in three stay valid in their fields: they reach schema and insert
    for name in mutated:
        how = draw(st.sampled_from(["replace", "delete", "nested"]))
        if how == "delete":
            body.pop(name, None)
        elif how == "nested" and isinstance(body.get(name), dict) and body[name]:
            key = draw(st.sampled_from(sorted(body[name])))
            body[name][key] = draw(json_values)
        else:
            body[name] = draw(json_values)
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        body[draw(any_text)] = draw(json_values)
    return body


def _splice_raw_number(draw: st.DrawFn, value: Any) -> bytes:
    marker = "__raw_number__"
    text = json.dumps({"wrap": value, "raw": marker})
    return text.replace(json.dumps(marker), draw(st.sampled_from(RAW_NUMBERS)), 1).encode()


def _nest(draw: st.DrawFn, value: Any) -> bytes:
    depth = draw(st.integers(min_value=1, max_value=64))
    text = json.dumps(value)
    for _ in range(depth):
        text = draw(st.sampled_from(['{"data": %s}', "[%s]", '{"signal": "open", "x": %s}'])) % text
    return text.encode()


@st.composite
def bodies(draw: st.DrawFn, top: st.SearchStrategy[Any] | None = None) -> tuple[str, bytes]:
    """(kind, bytes) of one request body; `top` builds the structured JSON value."""
    structured = top if top is not None else envelopes()
    kind = draw(
        st.sampled_from(
            [
                "envelope",
                "envelope",
                "envelope",
                "envelope",
                "envelope",
                "envelope-raw-utf8",
                "json-value",
                "raw-number",
                "nested",
                "truncated",
                "bom",
                "bytes",
                "text",
            ]
        )
    )
    if kind == "envelope":
        return kind, json.dumps(draw(structured)).encode()
    if kind == "envelope-raw-utf8":
        # Non-ASCII written as is; a lone surrogate becomes 3 bytes that are not UTF-8.
        text = json.dumps(draw(structured), ensure_ascii=False)
        return kind, text.encode("utf-8", "surrogatepass")
    if kind == "json-value":
        return kind, json.dumps(draw(json_values)).encode()
    if kind == "raw-number":
        return kind, _splice_raw_number(draw, draw(structured))
    if kind == "nested":
        return kind, _nest(draw, draw(structured))
    if kind == "truncated":
        raw = json.dumps(draw(structured)).encode()
        return kind, raw[: draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))]
    if kind == "bom":
        return kind, b"\xef\xbb\xbf" + json.dumps(draw(structured)).encode()
    if kind == "bytes":
        return kind, draw(st.binary(max_size=200))
    return kind, draw(any_text).encode("utf-8", "surrogatepass")


def batches() -> st.SearchStrategy[Any]:
    """The JSON value of a batch body: mostly {"events": [...]}, sometimes anything."""
    items = st.lists(envelopes() | envelopes() | envelopes() | json_values, max_size=6)
    return st.one_of(
        st.fixed_dictionaries({"events": items}),
        st.fixed_dictionaries({"events": items}),
        st.fixed_dictionaries({"events": items}, optional={"extra": json_values}),
        st.fixed_dictionaries({"events": json_values}),
        json_values,
    )


# --- Query strings ------------------------------------------------------------------------------
QUERY_NAMES = [
    "signal",
    "identity_type",
    "identity_id",
    "status",
    "reference",
    "since",
    "until",
    "limit",
    "cursor",
    "reason",
]
query_values = (
    st.sampled_from(
        [
            "open",
            "pending",
            "completed",
            "schema_violation",
            "unknown_signal",
            "2026-03-16T12:00:00Z",
            "2026-03-16T12:00:00+05:00",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+14:00",
            "0",
            "1",
            "100",
            "101",
            "-1",
            "1e3",
            "٣",
            "eyJ0IjoxfQ",
            "\x00",
            "",
        ]
    ).map(str.encode)
    | any_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=40)
)


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    """A query string: known and unknown names, any bytes, mostly percent-encoded."""
    pairs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(QUERY_NAMES).map(str.encode) | st.binary(max_size=10),
                query_values,
            ),
            max_size=5,
        )
    )
    parts = []
    for name, value in pairs:
        if draw(st.booleans()) or not (name + value).isascii():
            parts.append(quote_from_bytes(name) + "=" + quote_from_bytes(value))
        else:
            # Unencoded: '+', '&', '%' and '=' as a careless client sends them.
            parts.append(name.decode() + "=" + value.decode())
    return "&".join(parts)


def path_segments() -> st.SearchStrategy[str]:
    """A path segment: printable, unicode or raw bytes, percent-encoded."""
    return (
        st.sampled_from(["open", "schemaed", "latest", "1", "0", "account", "..", "%00"])
        | any_text.map(lambda text: quote_from_bytes(text.encode("utf-8", "surrogatepass")))
        | st.binary(min_size=1, max_size=20).map(quote_from_bytes)
    )
