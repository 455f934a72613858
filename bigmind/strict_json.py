"""Strict JSON: how a request body (or a sample typed into the admin) becomes a value.

Stricter than `json.loads`: UTF-8 only, no NaN/Infinity, no duplicate keys, finite numbers,
bounded nesting, no NUL and no lone surrogate (PostgreSQL's jsonb refuses both). In the kernel
because both apps parse by it: ingest (events_app) and "try a payload" (signals_app), which must
answer exactly as ingest does. On the ingest hot path: most bodies skip the tree walk (see
`json_body_parse`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings

from bigmind.errors import BadRequest


class InvalidJson(BadRequest):
    code = "invalid_json"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:60]!r}")
            seen.add(key)
    return obj


def _has_bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
    return None


def _check_tree(root: Any, max_depth: int) -> None:
    """Depth, NUL and surrogate checks in one iterative walk (no recursion to blow)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                raise InvalidJson(f"Request body is nested deeper than {max_depth} levels")
            for key, value in node.items():
                problem = _has_bad_text(key)
                if problem:
                    raise InvalidJson(f"Request body contains {problem}, which is not accepted")
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                raise InvalidJson(f"Request body is nested deeper than {max_depth} levels")
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, str):
            problem = _has_bad_text(node)
            if problem:
                raise InvalidJson(f"Request body contains {problem}, which is not accepted")


def json_body_parse(raw: bytes) -> Any:
    """Decode a request body as strict JSON: UTF-8, no NaN/Infinity, no duplicate keys,
    finite numbers, bounded nesting, no NUL or lone surrogates (PostgreSQL refuses both)."""
    if not raw.strip():
        raise InvalidJson("Request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"Request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except RecursionError as exc:
        raise InvalidJson("Request body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and our hooks' errors, and huge integers
        raise InvalidJson(f"Request body is not valid JSON: {exc}") from exc
    max_depth = settings.BIGMIND_JSON_MAX_DEPTH
    # Strict JSON has no raw control character or (in valid UTF-8) surrogate in a string: a NUL
    # or a lone surrogate can only come from a \u escape. And nesting cannot be deeper than
    # the number of brackets. Most bodies have neither, and skip the walk.
    if "\\u" in text or text.count("{") + text.count("[") > max_depth:
        _check_tree(value, max_depth)
    return value
