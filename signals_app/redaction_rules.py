"""Redaction rules of a signal: what they look like and how they are checked.

A rule names a place in the event's `data` by JSON Pointer (RFC 6901) and what to do there:
`drop` removes it, `hash` replaces it by `"hmac:" + hex HMAC-SHA256` keyed per organization. The
rules are applied at ingest (events_app/ingest/redaction.py); this module only checks them, so
the admin, `sync_signals` and the services refuse a bad rule the same way.
"""

from __future__ import annotations

import re
from typing import Any

from bigmind.errors import BadRequest

MODES = ("drop", "hash")
MAX_RULES = 50
MAX_POINTER_LENGTH = 500
# One reference token as RFC 6901 writes it: '~' only as '~0' or '~1'.
_TOKEN = re.compile(r"(?:[^~]|~[01])*")


def json_pointer_tokens(pointer: str) -> list[str]:
    """The reference tokens of a JSON Pointer into `data` (never the whole document: `data`
    itself cannot be redacted away). Raises ValueError on a malformed pointer."""
    if not pointer.startswith("/"):
        raise ValueError("a JSON Pointer starts with '/'")
    tokens = []
    for raw in pointer[1:].split("/"):
        # '~' is only valid as '~0' or '~1' (RFC 6901 §3); decode ~1 before ~0 (§4).
        if not _TOKEN.fullmatch(raw):
            raise ValueError("'~' must be written ~0, and '/' inside a name ~1")
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def redaction_rules_check(value: Any) -> list[dict[str, str]]:
    """The rules, normalised to `[{"path": ..., "mode": ...}]`; BadRequest naming the first
    problem. Pure, so forms can show the same errors the services raise."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("redact must be a list of {path, mode} rules")
    if len(value) > MAX_RULES:
        raise BadRequest(f"redact holds at most {MAX_RULES} rules")
    rules: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, rule in enumerate(value):
        where = f"redact[{index}]"
        if not isinstance(rule, dict) or set(rule) != {"path", "mode"}:
            raise BadRequest(f"{where} must be an object with exactly path and mode")
        path, mode = rule["path"], rule["mode"]
        if not isinstance(path, str) or not path or len(path) > MAX_POINTER_LENGTH:
            raise BadRequest(
                f"{where}.path must be a JSON Pointer of 1 to {MAX_POINTER_LENGTH} characters"
            )
        try:
            json_pointer_tokens(path)
        except ValueError as exc:
            raise BadRequest(f"{where}.path is not a JSON Pointer into data: {exc}") from exc
        if "\x00" in path:
            raise BadRequest(f"{where}.path must not contain NUL")
        if mode not in MODES:
            raise BadRequest(f"{where}.mode must be one of {', '.join(MODES)}: {mode!r}")
        if path in seen:
            raise BadRequest(f"{where}.path {path} is named twice")
        seen.add(path)
        rules.append({"path": path, "mode": mode})
    return rules
