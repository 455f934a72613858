"""docs/webhooks.md's verification snippets, in Python and in Node, accept exactly what the
project's signer (events_app/webhooks/signing.py) produces, and refuse a tampered body, another
secret and an old time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from events_app.webhooks.signing import header_value

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec_0123456789abcdefghijABCDEFGHIJkl"
NEW_SECRET = "whsec_NEWNEWNEWNEWNEWNEWNEWNEWNEWNEWNE"
BODY = json.dumps(
    {"id": "whevt_0193a1", "type": "ping", "created": "2026-12-04T20:00:36Z", "data": {"é": 1}},
    ensure_ascii=False,
).encode()


def snippet(language: str) -> str:
    found = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(found) == 1, f"one {language} block in {DOC.name}"
    return found[0]


def cases() -> list[tuple[str, bytes, str, bool]]:
    now = int(time.time())
    rotated = header_value([NEW_SECRET, SECRET], now, BODY)
    return [
        (header_value([SECRET], now, BODY), BODY, SECRET, True),
        (rotated, BODY, SECRET, True),
        (rotated, BODY, NEW_SECRET, True),
        (header_value([SECRET], now, BODY), BODY + b" ", SECRET, False),
        (header_value([SECRET], now, BODY), BODY, NEW_SECRET, False),
        (header_value([SECRET], now - 600, BODY), BODY, SECRET, False),
        ("t=1,v1=zz", BODY, SECRET, False),
        (f"t={now},v1=\u00e9", BODY, SECRET, False),
        ("t=" + "9" * 400 + ",v1=00", BODY, SECRET, False),
    ]


def test_the_python_snippet_verifies_what_the_signer_sends() -> None:
    namespace: dict[str, Any] = {}
    exec(snippet("python"), namespace)  # noqa: S102 - the documented snippet, from our own repository
    for header, body, secret, expected in cases():
        assert namespace["verify"](header, body, secret) is expected, (header, secret)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_snippet_verifies_what_the_signer_sends() -> None:
    payload = [{"header": h, "body": b.hex(), "secret": s, "expected": e} for h, b, s, e in cases()]
    program = (
        snippet("javascript")
        + "\nconst cases = JSON.parse(process.argv[1]);\n"
        + "console.log(JSON.stringify(cases.map((c) =>"
        + " verify(c.header, Buffer.from(c.body, 'hex'), c.secret) === c.expected)));\n"
    )
    out = subprocess.run(
        ["node", "-e", program, json.dumps(payload)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(out) == [True] * len(payload)
