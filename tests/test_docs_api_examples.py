"""Every example of docs/api.md (and of the README's quick start) is executed against the
demo data, and its documented answer is compared with the real one, so the pages cannot drift
from the code (issue #12).

The rules a page keeps so that this works (an example is a `sh` curl block answered by the next
`json` block; placeholders such as `"<uuid>"` for values that differ per run; `"<uuid:NAME>"`
and `$NAME` for a value a later example uses; `"...": "..."` for an abridged object) are stated
for readers in docs/api.md, section "Examples are tests"; this module implements exactly them.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client

from events_app.ingest.ratelimits import rate_limit_consume_many, rate_limit_for
from events_app.models import Event, EventStatus
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import processor_get
from signals_app.models import Organization
from signals_app.selectors import signal_get_active_ref

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "http://127.0.0.1:8000"

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")
SIGNAL_ID = re.compile(r"^sig_[A-Za-z0-9]{8}$")
WHSEC = re.compile(r"^whsec_[A-Za-z0-9]{32}$")
CAPTURE = re.compile(r"^<(uuid|we_id|whevt_id):([A-Z_][A-Z0-9_]*)>$")
# What each capture placeholder accepts (docs/webhooks.md's ids besides the UUIDs).
CAPTURED = {
    "uuid": UUID,
    "we_id": re.compile(r"^we_[0-9A-Za-z]{12}$"),
    "whevt_id": re.compile(r"^whevt_[0-9a-f]{32}$"),
}
VARIABLE = re.compile(r"\$([A-Z_][A-Z0-9_]*)")
FENCE = re.compile(r"^```(\w*)\s*$")
# `<!-- example: the budget of SLUG is spent -->` before an example: its signal's rate budget is
# used up while it runs (a 429 is shown by running it, not by a body written by hand).
SPENT = re.compile(r"^<!-- example: the budget of ([a-z0-9-]+) is spent -->$", re.M)
STATUS_LINE = re.compile(r"^HTTP/1\.1 (\d{3})\b")


@dataclass
class Example:
    name: str  # the page, for messages
    line: int  # of the curl block
    command: str
    answer: str = ""
    answer_line: int = 0
    spent: str | None = None  # a signal whose budget is used up for this example only


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def blocks(text: str) -> Iterator[tuple[str, int, str]]:
    """(language, first line number, content) of each fenced block of a markdown text."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index + 1
        index = start
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        yield opening.group(1), start + 1, "\n".join(lines[start:index])
        index += 1


def examples(text: str, name: str = "docs/api.md") -> list[Example]:
    """The page's examples; fails on a curl without an answer or an answer without a curl."""
    found: list[Example] = []
    pending: Example | None = None
    spent_at = {text.count("\n", 0, m.start()) + 1: m.group(1) for m in SPENT.finditer(text)}
    for language, line, content in blocks(text):
        assert language in ("sh", "bash", "json") or "curl " not in content, (
            f"{name}:{line}: a curl in a `{language}` block is not run: write it as `sh`"
        )
        if language in ("sh", "bash") and "curl " in content:
            assert pending is None, f"{name}:{pending.line}: a curl example without an answer"
            pending = Example(name=name, line=line, command=content)
            # The directive on one of the three lines above the block's fence.
            pending.spent = next(
                (spent_at[n] for n in range(line - 3, line) if n in spent_at), None
            )
        elif language == "json":
            assert pending is not None, f"{name}:{line}: a json block that answers no curl"
            pending.answer, pending.answer_line = content, line
            found.append(pending)
            pending = None
    assert pending is None, f"{name}:{pending.line}: a curl example without an answer"
    return found


def variable(variables: dict[str, str], name: str) -> str:
    assert name in variables, f"${name} is used before an answer defines it as <uuid:{name}>"
    return variables[name]


def request_of(command: str, variables: dict[str, str]) -> Request:
    """What a curl command sends, for the options the page uses."""
    words = shlex.split(command.replace("\\\n", " "))
    assert words[0] == "curl", command
    method: str | None = None
    url = ""
    headers: dict[str, str] = {}
    data: list[str] = []
    query: list[str] = []
    as_query = False
    words = words[1:]
    while words:
        word = words.pop(0)
        if word in ("-i", "-s", "-si", "-is"):
            continue
        if word == "-X":
            method = words.pop(0)
        elif word == "-H":
            name, _, value = words.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data"):
            data.append(words.pop(0))
        elif word == "--data-urlencode":
            name, _, value = words.pop(0).partition("=")
            query.append(f"{name}={quote(value, safe='')}")
        elif word == "-G":
            as_query = True
        elif word.startswith("http"):
            url = word
        else:
            raise AssertionError(f"an unsupported curl option {word!r} in {command!r}")
    assert url.startswith(BASE_URL), f"examples use {BASE_URL}: {url}"
    url = VARIABLE.sub(lambda m: variable(variables, m.group(1)), url)
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if query:
        assert as_query, "--data-urlencode is used with -G on this page"
        path += ("&" if "?" in path else "?") + "&".join(query)
    body = "".join(data) if data else None
    return Request(method or ("POST" if body is not None else "GET"), path, headers, body)


def answer_of(text: str) -> Answer:
    lines = text.splitlines()
    status, headers = 200, {}
    matched = STATUS_LINE.match(lines[0]) if lines else None
    if matched:
        status = int(matched.group(1))
        index = 1
        while index < len(lines) and lines[index].strip():
            name, _, value = lines[index].partition(":")
            headers[name.strip()] = value.strip()
            index += 1
        lines = lines[index:]
    return Answer(status, headers, json.loads("\n".join(lines)))


def differences(
    documented: Any, actual: Any, where: str, variables: dict[str, str], captured: dict[str, str]
) -> list[str]:
    """Where `actual` differs from the documented answer, with its placeholders (module doc)."""
    if isinstance(documented, str):
        capture = CAPTURE.match(documented)
        if capture:
            kind, name = capture.groups()
            if not (isinstance(actual, str) and CAPTURED[kind].match(actual)):
                return [f"{where}: {actual!r} is not a {'UUID' if kind == 'uuid' else kind}"]
            captured[name] = actual
            return []
        patterns = {
            "<uuid>": UUID,
            "<timestamp>": TIMESTAMP,
            "<signal_id>": SIGNAL_ID,
            "<whsec>": WHSEC,
        }
        if documented in patterns:
            if isinstance(actual, str) and patterns[documented].match(actual):
                return []
            return [f"{where}: {actual!r} is not a {documented}"]
        if documented == "<cursor>":
            return [] if isinstance(actual, str) and actual else [f"{where}: {actual!r}"]
        if documented == "<number>":
            ok = isinstance(actual, int | float) and not isinstance(actual, bool)
            return [] if ok else [f"{where}: {actual!r} is not a number"]
        named = re.fullmatch(r"\$([A-Z_][A-Z0-9_]*)", documented)
        if named:
            documented = variable(variables, named.group(1))
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{where}: documented an object, got {actual!r}"]
        open_ended = documented.get("...") == "..."
        keys = [key for key in documented if key != "..."]
        problems = [f"{where}: no member {key!r}" for key in keys if key not in actual]
        if not open_ended:
            extra = [key for key in actual if key not in documented]
            problems += [f"{where}: undocumented member {key!r}" for key in extra]
        for key in keys:
            if key in actual:
                problems += differences(
                    documented[key], actual[key], f"{where}.{key}", variables, captured
                )
        return problems
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return [f"{where}: documented a list, got {actual!r}"]
        open_ended = bool(documented) and documented[-1] == "..."
        items = documented[:-1] if open_ended else documented
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return [f"{where}: {len(actual)} items, documented {len(items)}"]
        problems = []
        for index, item in enumerate(items):
            problems += differences(item, actual[index], f"{where}[{index}]", variables, captured)
        return problems
    if type(documented) is not type(actual) or documented != actual:
        return [f"{where}: documented {documented!r}, got {actual!r}"]
    return []


def process_pending() -> None:
    """What `make run`'s worker does between two examples."""
    pending = list(Event.objects.filter(status=EventStatus.PENDING).values_list("id", flat=True))
    if pending:
        events_process(event_ids=pending)


def send(client: Client, request: Request) -> Any:
    return client.generic(
        request.method,
        request.path,
        request.body or "",
        content_type=request.headers.get("Content-Type", "application/octet-stream"),
        headers={k: v for k, v in request.headers.items() if k != "Content-Type"},
    )


def replay(example: Example, client: Client, variables: dict[str, str]) -> list[str]:
    """Run one example; the differences between its documented and its real answer."""
    request = request_of(example.command, variables)
    documented = answer_of(example.answer)
    process_pending()
    if example.spent is None:
        response = send(client, request)
    else:
        signal = signal_get_active_ref(
            organization_id=Organization.objects.get(slug="demo").id, slug=example.spent
        )
        assert signal is not None, f"{example.name}:{example.line}: no signal {example.spent}"
        rate_limit_consume_many(signal, rate_limit_for(signal))
        response = send(client, request)
        cache.clear()  # the budget is spent for this example only
    where = f"{example.name}:{example.line} ({request.method} {request.path})"
    problems = []
    if response.status_code != documented.status:
        problems.append(f"{where}: status {response.status_code}, documented {documented.status}")
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*problems, f"{where}: the answer is not JSON: {response.content[:200]!r}"]
    captured: dict[str, str] = {}
    problems += [
        f"{where}: {problem}"
        for problem in differences(documented.body, body, "$", variables, captured)
    ]
    variables.update(captured)
    # Headers last: they may show a value the body defines (`Location: /v1/events/$EVENT_ID`).
    for name, value in documented.headers.items():
        real = response.headers.get(name)
        if real != VARIABLE.sub(lambda m: variable(variables, m.group(1)), value):
            problems.append(f"{where}: header {name}: {real!r}, documented {value!r}")
    return problems


@pytest.fixture
def demo(db: None, settings: Any, pipeline_in_process: None) -> None:
    """`bootstrap_demo`'s data, the local processor, and no broker (events are processed here)."""
    settings.BIGMIND_PROCESSOR = "local"
    processor_get.cache_clear()
    call_command("bootstrap_demo", "--allow-production", stdout=StringIO())


def page_text(page: str) -> str:
    """The page, or one `## ` section of it (`docs/webhooks.md#The API`)."""
    name, _, heading = page.partition("#")
    text = (ROOT / name).read_text(encoding="utf-8")
    if not heading:
        return text
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize(
    ("page", "at_least"),
    [("docs/api.md", 14), ("README.md", 1), ("docs/webhooks.md#The API", 9)],
)
def test_every_example_of_the_page_answers_as_documented(
    demo: None, page: str, at_least: int
) -> None:
    found = examples(page_text(page), page)
    # A change of format that hid examples from the parser must not pass as "nothing to check".
    assert len(found) >= at_least, f"{page}: only {len(found)} examples found"
    client, variables, problems = Client(), dict[str, str](), list[str]()
    for example in found:
        problems += replay(example, client, variables)
    assert not problems, f"{page} differs from the API:\n" + "\n".join(problems)


def test_the_readme_curl_is_the_one_bootstrap_demo_prints(db: None) -> None:
    (example,) = examples((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    out = StringIO()
    call_command("bootstrap_demo", "--allow-production", stdout=out)
    assert example.command in out.getvalue()


# --- the comparison itself can fail -----------------------------------------------------------
@pytest.mark.parametrize(
    ("documented", "actual", "problem"),
    [
        ({"a": 1}, {"a": 2}, "$.a: documented 1, got 2"),
        ({"a": 1}, {"a": 1.0}, "$.a: documented 1, got 1.0"),
        ({"a": 1}, {"a": 1, "b": 2}, "$: undocumented member 'b'"),
        ({"a": 1, "b": 2}, {"a": 1}, "$: no member 'b'"),
        ({"a": 1, "...": "..."}, {"b": 2}, "$: no member 'a'"),
        ([1, 2], [1], "$: 1 items, documented 2"),
        ([1], [1, 2], "$: 2 items, documented 1"),
        ([1, "..."], [], "$: 0 items, documented 1"),
        ("<uuid>", "abc", "$: 'abc' is not a <uuid>"),
        ("<timestamp>", "2026-03-16T12:00:00+00:00", "is not a <timestamp>"),
        ("<signal_id>", "sig_1", "is not a <signal_id>"),
        ("<number>", "1", "is not a number"),
        ("<number>", True, "is not a number"),
        ("<cursor>", None, "$: None"),
        ("$EVENT_ID", "other", "$: documented 'known', got 'other'"),
    ],
)
def test_a_difference_is_reported(documented: Any, actual: Any, problem: str) -> None:
    found = differences(documented, actual, "$", {"EVENT_ID": "known"}, {})
    assert any(problem in line for line in found), found


@pytest.mark.parametrize(
    ("documented", "actual"),
    [
        ({"a": 1, "...": "..."}, {"a": 1, "b": 2}),
        ([1, "..."], [1, 2, 3]),
        ("<timestamp>", "2026-03-16T12:00:00.123456Z"),
        ("<signal_id>", "sig_bFyqj0qg"),
        ("<number>", 8.6),
    ],
)
def test_what_a_placeholder_allows_is_no_difference(documented: Any, actual: Any) -> None:
    assert differences(documented, actual, "$", {}, {}) == []


def test_a_captured_uuid_is_used_by_later_commands_and_answers() -> None:
    captured: dict[str, str] = {}
    uuid = "01a216c1-0ff1-796c-b020-5c1c16b67bbb"
    assert differences({"id": "<uuid:EVENT_ID>"}, {"id": uuid}, "$", {}, captured) == []
    assert captured == {"EVENT_ID": uuid}
    request = request_of(f'curl -s {BASE_URL}/v1/events/$EVENT_ID -H "A: b"', captured)
    assert (request.method, request.path, request.headers) == (
        "GET",
        f"/v1/events/{uuid}",
        {"A": "b"},
    )
    with pytest.raises(AssertionError, match=r"\$OTHER is used before"):
        request_of(f"curl {BASE_URL}/v1/events/$OTHER", {})


def test_curl_is_translated_as_curl_would_send_it() -> None:
    request = request_of(
        f"curl -s -G {BASE_URL}/v1/events \\\n"
        '  --data-urlencode "since=2026-03-16T00:00:00+02:00" --data-urlencode "limit=1"',
        {},
    )
    assert (request.method, request.path) == (
        "GET",
        "/v1/events?since=2026-03-16T00%3A00%3A00%2B02%3A00&limit=1",
    )
    request = request_of(f"curl -i -X POST {BASE_URL}/v1/events -d '{{\"a\": 1}}'", {})
    assert (request.method, request.body) == ("POST", '{"a": 1}')
    with pytest.raises(AssertionError, match="unsupported curl option"):
        request_of(f"curl --compressed {BASE_URL}/v1/events", {})


def test_every_curl_needs_an_answer_and_every_answer_a_curl() -> None:
    curl, answer = "```sh\ncurl http://127.0.0.1:8000/v1/x\n```\n", '```json\n{"a": 1}\n```\n'
    assert len(examples(curl + answer)) == 1
    with pytest.raises(AssertionError, match="without an answer"):
        examples(curl + curl + answer)
    with pytest.raises(AssertionError, match="answers no curl"):
        examples(curl + answer + answer)
    assert answer_of("HTTP/1.1 404 Not Found\nX-A: b\n\n{}") == Answer(404, {"X-A": "b"}, {})
