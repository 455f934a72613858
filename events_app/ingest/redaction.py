"""Redaction of an event's `data` before anything of it is stored or logged (docs/governance.md,
"Redaction").

A signal's rules (checked by signals_app/redaction_rules.py, carried by its cached SignalRef as
`((path, mode), ...)`) name places in `data` by JSON Pointer:
- `drop` removes the member (or the array item) the pointer names;
- `hash` replaces its value by `"hmac:" + hex HMAC-SHA256(organization key, canonical bytes)`,
  the canonical bytes being the value's JSON with sorted keys, no spaces, UTF-8 (not ASCII
  escapes), so equal values give equal hashes whatever their key order.

Every pointer is resolved against the data as received, never against the data a previous rule
changed: `/items/0` and `/items/1` drop the first two items, not the first and the third. A
pointer that names nothing in this event does nothing. A value that is already a hash (a
replayed rejection whose body was redacted when stored) is left as it is, so redacting twice is
redacting once.

The caller's object is never changed: the result is a new dict in which only the containers on a
rule's path are copies (the rest is shared with the input, so nothing may change it in place).

The organization key is derived, never stored: HMAC-SHA256 keyed by BIGMIND_REDACTION_KEY
(DJANGO_SECRET_KEY when unset, which `check --deploy` refuses) over a fixed context and the
organization's id. A dump of the database alone therefore cannot recompute a hash, so a hashed
e-mail cannot be found by hashing a dictionary of e-mails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.conf import settings

from bigmind.json_path import json_path
from signals_app.redaction_rules import json_pointer_tokens

# ((path, mode), ...): SignalRef.redact.
Rules = tuple[tuple[str, str], ...]

HASH_PREFIX = "hmac:"
_HASHED = re.compile(r"hmac:[0-9a-f]{64}")
# The key derivation's context: changing it changes every hash (never change it).
_KEY_CONTEXT = b"bigmind redaction key v1\x00"
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# An array index in a JSON Pointer: "0" or digits without a leading zero (RFC 6901 section 4).
_INDEX = re.compile(r"0|[1-9][0-9]*")
REDACTED_VALUE = "<redacted>"


# --- The organization key -----------------------------------------------------------------------
def redaction_secret() -> str:
    """The secret every organization key derives from."""
    return str(getattr(settings, "BIGMIND_REDACTION_KEY", "") or settings.SECRET_KEY)


@lru_cache(maxsize=4096)
def _organization_key(secret: str, organization_id: int) -> bytes:
    return hmac.new(
        secret.encode(), _KEY_CONTEXT + str(organization_id).encode(), hashlib.sha256
    ).digest()


@lru_cache(maxsize=4096)
def _organization_mac(secret: str, organization_id: int) -> Any:
    # A keyed HMAC object to copy per value: the key's two pad blocks are hashed once.
    return hmac.new(_organization_key(secret, organization_id), digestmod=hashlib.sha256)


def redaction_key(organization_id: int) -> bytes:
    """The organization's 32-byte HMAC key: HMAC-SHA256(secret, context + id), cached."""
    return _organization_key(redaction_secret(), organization_id)


def value_canonical_bytes(value: Any) -> bytes:
    """What a `hash` rule hashes: the value's JSON, sorted keys, no whitespace, UTF-8."""
    return _CANONICAL.encode(value).encode("utf-8", "surrogatepass")


def value_hash(value: Any, *, organization_id: int) -> str:
    """`"hmac:" + hex HMAC-SHA256(organization key, canonical bytes of value)`."""
    if isinstance(value, str) and _HASHED.fullmatch(value):
        return value
    mac = _organization_mac(redaction_secret(), organization_id).copy()
    mac.update(value_canonical_bytes(value))
    return HASH_PREFIX + mac.hexdigest()


# --- Rules, compiled once -----------------------------------------------------------------------
@dataclass
class _Node:
    """A place some rule goes through: `mode` if a rule ends here, `children` by token."""

    mode: str | None = None
    children: dict[str, _Node] = field(default_factory=dict)


@lru_cache(maxsize=1024)
def rules_compile(rules: Rules) -> _Node | None:
    """The rules as a tree of tokens (parsed once per distinct rule set); None when empty."""
    if not rules:
        return None
    root = _Node()
    for path, mode in rules:
        node = root
        for token in json_pointer_tokens(path):
            node = node.children.setdefault(token, _Node())
        # A pointer to a place inside a hashed or dropped one changes nothing more: the outer
        # rule already took the whole value.
        node.mode = mode
    return root


def _index(token: str, length: int) -> int | None:
    if not _INDEX.fullmatch(token):
        return None
    index = int(token)
    return index if index < length else None


def _apply(value: Any, node: _Node, organization_id: int) -> Any:
    """`value` with the rules below `node` applied (a copy of each container changed)."""
    if isinstance(value, dict):
        changed: dict[str, Any] | None = None
        for token, child in node.children.items():
            if token not in value:
                continue
            if changed is None:
                changed = dict(value)
            if child.mode == "drop":
                del changed[token]
            elif child.mode == "hash":
                changed[token] = value_hash(value[token], organization_id=organization_id)
            else:
                changed[token] = _apply(value[token], child, organization_id)
        return value if changed is None else changed
    if isinstance(value, list):
        items: list[Any] | None = None
        dropped: set[int] = set()
        for token, child in node.children.items():
            index = _index(token, len(value))
            if index is None:
                continue
            if items is None:
                items = list(value)
            if child.mode == "drop":
                dropped.add(index)
            elif child.mode == "hash":
                items[index] = value_hash(value[index], organization_id=organization_id)
            else:
                items[index] = _apply(value[index], child, organization_id)
        if items is None:
            return value
        return [item for i, item in enumerate(items) if i not in dropped] if dropped else items
    return value  # a scalar has no members: the pointer names nothing


def data_redact(data: dict[str, Any], *, rules: Rules, organization_id: int) -> dict[str, Any]:
    """`data` with the signal's rules applied; `data` itself when there are none."""
    root = rules_compile(rules)
    if root is None:
        return data
    result: dict[str, Any] = _apply(data, root, organization_id)
    return result


# --- Violation details ----------------------------------------------------------------------------
def _locations(
    data: Any, node: _Node, parts: list[str | int], dropped: list[str] | None = None
) -> list[tuple[str, Any]]:
    """(json path, original value) of every redacted place present in `data`; the paths of the
    arrays an item was dropped from are added to `dropped`."""
    found: list[tuple[str, Any]] = []
    for token, child in node.children.items():
        if isinstance(data, dict) and token in data:
            key: str | int = token
            value = data[token]
        elif isinstance(data, list) and (index := _index(token, len(data))) is not None:
            key, value = index, data[index]
            if child.mode == "drop" and dropped is not None:
                dropped.append(json_path(parts))
        else:
            continue
        if child.mode is not None:
            found.append((json_path([*parts, key]), value))
        else:
            found.extend(_locations(value, child, [*parts, key], dropped))
    return found


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for member in value.values() for leaf in _leaves(member)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _shown(text: str, leaf: Any) -> bool:
    if isinstance(leaf, str):
        return (bool(leaf) and leaf in text) or repr(leaf) in text
    # A number, true/false/null, as Python or JSON writes it, not as a piece of a longer one.
    for form in {repr(leaf), json.dumps(leaf)}:
        if re.search(rf"(?<![0-9A-Za-z_.]){re.escape(form)}(?![0-9A-Za-z_])", text):
            return True
    return False


def _quotes(text: str, value: Any) -> bool:
    """Whether `text` may show `value` (or any scalar inside it), as repr or as text."""
    return any(_shown(text, leaf) for leaf in _leaves(value))


def _inside(path: str, location: str) -> bool:
    return path == location or path.startswith((location + ".", location + "["))


def violations_redact(
    details: Sequence[dict[str, Any]], *, data: Any, rules: Rules
) -> list[dict[str, Any]]:
    """Schema violation `details` (signals_app.schemas.schema_violations, checked on the
    original `data`) made safe to store: no message or path shows a redacted value.

    jsonschema quotes the instance in its messages ("'bob@x.io' is not a 'email'"; an object's
    violation quotes the whole object), so each redacted value's repr is replaced by
    `<redacted>`; a message that still shows any piece of one is withheld, keeping its keyword.
    A violation inside a redacted value is moved to the redacted place itself (names of members
    inside it may be data too, e.g. an object keyed by e-mail address); one inside an array an
    item was dropped from, to the array (the positions after the dropped item have moved).
    """
    root = rules_compile(rules)
    if root is None or not details:
        return list(details)
    dropped: list[str] = []
    located = _locations(data, root, [], dropped)
    if not located:
        return list(details)
    # Longest first: a value's repr may contain a shorter redacted value's repr.
    reprs = sorted(
        ((repr(value), value) for _, value in located), key=lambda pair: len(pair[0]), reverse=True
    )
    safe: list[dict[str, Any]] = []
    for detail in details:
        path = str(detail.get("path", ""))
        message = str(detail.get("message", ""))
        keyword = str(detail.get("keyword", ""))
        for location, _ in located:
            if _inside(path, location):
                path = location
                break
        # An item dropped from an array moves the items after it: a position inside that array
        # would name another item of the stored data, so the violation is put on the array.
        for array in dropped:
            if path != array and _inside(path, array):
                path = array
                break
        for shown, _ in reprs:
            message = message.replace(shown, REDACTED_VALUE)
        if any(_quotes(message, value) for _, value in located):
            message = f"message withheld: it would show a redacted value (failed {keyword!r})"
        safe.append({**detail, "path": path, "message": message})
    return safe
