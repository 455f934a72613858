"""The IRI formats' grammar is built on first use, not at start-up (bigmind/iri_format.py), and
the formats still decide as rfc3987-syntax does."""

from __future__ import annotations

import subprocess
import sys

import pytest
from jsonschema import Draft202012Validator

from bigmind.iri_format import defer_iri_grammar

# One xdist worker: each process that checks an IRI builds the grammar (seconds of CPU).
pytestmark = pytest.mark.xdist_group("iri-format")

IMPORT_PROBE = """
import sys
import bigmind, jsonschema
print("syntax_helpers" if "rfc3987_syntax.syntax_helpers" in sys.modules else "deferred")
v = jsonschema.Draft202012Validator(
    {"format": "iri"}, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
print(v.is_valid("https://example.com/caf\u00e9"), v.is_valid("https://[oops/"))
print("syntax_helpers" if "rfc3987_syntax.syntax_helpers" in sys.modules else "deferred")
"""


def test_a_process_builds_the_iri_grammar_only_when_a_value_is_first_checked() -> None:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["deferred", "True", "False", "syntax_helpers"]


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("iri", "https://example.com/caf\u00e9?q=\u00fc#frag"),
        ("iri", "urn:isbn:0451450523"),
        ("iri", "https://[::1]:8080/x"),
        ("iri", "https://[oops/"),
        ("iri", "no scheme"),
        ("iri", "/relative/only"),
        ("iri", "http://exa mple.com"),
        ("iri-reference", "../caf\u00e9"),
        ("iri-reference", "#frag"),
        ("iri-reference", "\\\\host\\share"),
        ("iri-reference", "http://%zz"),
    ],
)
def test_the_formats_decide_as_rfc3987_syntax_does(fmt: str, value: str) -> None:
    from rfc3987_syntax.syntax_helpers import is_valid_syntax

    validator = Draft202012Validator(
        {"format": fmt}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    assert validator.is_valid(value) is is_valid_syntax(fmt.replace("-", "_"), value)


def test_the_stand_in_is_in_place_in_this_process() -> None:
    # Django's start-up (bigmind/__init__.py) put it there before jsonschema was imported.
    assert defer_iri_grammar() is True
