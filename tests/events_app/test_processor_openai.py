"""The OpenAI-compatible processor against a real local HTTP server (no mocked `requests`).

The fake endpoint is a ThreadingHTTPServer on 127.0.0.1 speaking HTTP/1.1 (so connection reuse is
observable); each test scripts its answers and reads back the requests it received.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from events_app.models import Event, EventStatus, Insight
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import (
    EventInfo,
    InsightDraft,
    PermanentProcessingError,
    ProcessingInput,
    RecordContext,
    SignalInfo,
    TransientProcessingError,
    processor_get,
)
from events_app.pipeline.processors.openai import MAX_SECTION_BYTES, OpenAIProcessor
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

API_KEY = "sk-test-0123456789-very-secret"
MODEL = "test-model-7b"
GOOD: dict[str, Any] = {
    "summary": "Account 001ABC read the quickstart for two minutes",
    "score": 72,
    "next_action": "Offer an onboarding call this week.",
    "reasons": ["Quickstart reads precede trials.", "Third docs visit in 7 days."],
}


def completion(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A chat-completions answer as OpenAI shapes it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] = field(default_factory=lambda: completion(json.dumps(GOOD)))
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: Message
    raw: bytes
    client_port: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def system(self) -> str:
        return self.json["messages"][0]["content"]

    @property
    def user(self) -> dict[str, Any]:
        return json.loads(self.json["messages"][1]["content"])


class FakeAI:
    """The scripted side of the fake endpoint: answers in order, the last one repeats."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        port = server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self.replies: list[Reply] = [Reply()]
        self.received: list[Received] = []
        # Set at teardown so a handler still "thinking" (the timeout test) stops at once.
        self.release = threading.Event()
        self.lock = threading.Lock()

    def answer(self, *replies: Reply) -> None:
        self.replies = list(replies)

    def next_reply(self) -> Reply:
        with self.lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a reused connection shows as one client port
    server: Any

    def do_POST(self) -> None:
        fake: FakeAI = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with fake.lock:
            fake.received.append(
                Received(
                    path=self.path,
                    # Header names are case-insensitive (the SDK sends them in lower case).
                    headers=self.headers,
                    raw=raw,
                    client_port=self.client_address[1],
                )
            )
        reply = fake.next_reply()
        if reply.delay:
            fake.release.wait(reply.delay)
        body = reply.body
        if isinstance(body, dict):
            body = json.dumps(body)
        payload = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, oversized answer) resets its kept-alive connection;
        # anything else is a bug in the fake and should show.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def fake_ai(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAI]:
    # An HTTP(S)_PROXY in the environment must not swallow requests to the fake server.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = Server(("127.0.0.1", 0), Handler)
    fake = FakeAI(server)
    server.fake = fake  # type: ignore[attr-defined]
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    settings.BIGMIND_AI_BASE_URL = fake.url
    settings.BIGMIND_AI_API_KEY = API_KEY
    settings.BIGMIND_AI_MODEL = MODEL
    settings.BIGMIND_AI_TIMEOUT_SECONDS = 5.0
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def job(
    *,
    data: dict[str, Any] | None = None,
    kind: str = "event",
    facts: dict[str, Any] | None = None,
    context: RecordContext | None = None,
) -> ProcessingInput:
    return ProcessingInput(
        kind=kind,
        signal=SignalInfo(
            slug="visited-documentation-page",
            name="Visited documentation page",
            type="event",
            description="A user opened a page of the product documentation.",
            ai_instructions="Quickstart and pricing pages signal buying intent.",
        ),
        event=EventInfo(
            id="0190a000-0000-7000-8000-000000000001",
            identity_type="account",
            identity_id="001ABC000000123",
            data=data if data is not None else {"page": "/docs/quickstart", "seconds": 120},
            timestamp=datetime(2026, 3, 10, 12, 0, tzinfo=UTC),
        ),
        context=context
        or RecordContext(
            signal_events_7d=2,
            events_7d=5,
            states={"health": {"status": "yellow"}},
            recent_insights=[
                {
                    "signal": "visited-pricing",
                    "summary": "Looked at pricing twice",
                    "score": 61,
                    "occurred_at": "2026-03-09T10:00:00Z",
                }
            ],
        ),
        facts=facts or {},
    )


# A good answer ---------------------------------------------------------------------------


def test_a_good_answer_becomes_an_insight_draft(fake_ai: FakeAI) -> None:
    draft = OpenAIProcessor().insight(job())

    assert draft == InsightDraft(**GOOD)


def test_the_request_carries_model_key_format_signal_event_and_context(fake_ai: FakeAI) -> None:
    OpenAIProcessor().insight(
        job(kind="state_change", facts={"previous": {"status": "green"}, "current": {"x": 1}})
    )

    [request] = fake_ai.received
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    body = request.json
    assert body["model"] == MODEL
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "A user opened a page of the product documentation." in request.system
    assert "Quickstart and pricing pages signal buying intent." in request.system
    assert "Visited documentation page" in request.system
    assert '"summary"' in request.system and '"reasons"' in request.system
    user = request.user
    assert user["insight_kind"] == "state_change"
    assert user["facts"] == {"previous": {"status": "green"}, "current": {"x": 1}}
    assert user["event"] == {
        "id": "0190a000-0000-7000-8000-000000000001",
        "identity": {"type": "account", "id": "001ABC000000123"},
        "timestamp": "2026-03-10T12:00:00Z",
        "data": {"page": "/docs/quickstart", "seconds": 120},
    }
    assert user["record_context"]["signal_events_7d"] == 2
    assert user["record_context"]["events_7d"] == 5
    assert user["record_context"]["states"] == {"health": {"status": "yellow"}}
    assert user["record_context"]["recent_insights"][0]["summary"] == "Looked at pricing twice"


def test_without_a_key_no_authorization_header_is_sent(fake_ai: FakeAI, settings: Any) -> None:
    settings.BIGMIND_AI_API_KEY = ""
    OpenAIProcessor().insight(job())

    assert "Authorization" not in fake_ai.received[0].headers


def test_the_version_records_the_model_within_the_column_length(settings: Any) -> None:
    settings.BIGMIND_AI_MODEL = MODEL
    processor = OpenAIProcessor()
    assert (processor.name, processor.version) == ("openai", f"2/{MODEL}")
    assert processor.wants_context is True

    settings.BIGMIND_AI_MODEL = "org/" + "very-long-model-name-" * 5
    assert len(OpenAIProcessor().version) == Insight._meta.get_field("processor_version").max_length


def test_one_processor_reuses_its_connection(fake_ai: FakeAI) -> None:
    processor = OpenAIProcessor()
    processor.insight(job())
    processor.insight(job())

    first, second = fake_ai.received
    assert first.client_port == second.client_port


def test_the_key_is_not_in_the_processors_repr(settings: Any) -> None:
    settings.BIGMIND_AI_API_KEY = API_KEY
    settings.BIGMIND_AI_BASE_URL = "https://user:password@ai.example.com/v1/"
    text = repr(OpenAIProcessor())
    assert API_KEY not in text and "password" not in text
    assert "https://ai.example.com/v1/chat/completions" in text


@pytest.mark.parametrize(
    "content",
    [
        "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
        "```\n" + json.dumps(GOOD) + "\n```\n",
        "Here is the insight:\n```json\n" + json.dumps(GOOD) + "\n```",
        "  \n" + json.dumps(GOOD) + "\n",
    ],
    ids=["json-fence", "bare-fence", "prose-then-fence", "whitespace"],
)
def test_fenced_json_is_accepted(fake_ai: FakeAI, content: str) -> None:
    fake_ai.answer(Reply(body=completion(content)))

    assert OpenAIProcessor().insight(job()) == InsightDraft(**GOOD)


def test_a_whole_number_score_written_as_a_float_is_stored_as_an_int(fake_ai: FakeAI) -> None:
    fake_ai.answer(Reply(body=completion(json.dumps({**GOOD, "score": 72.0}))))

    draft = OpenAIProcessor().insight(job())
    assert draft.score == 72 and type(draft.score) is int


# Bounded requests --------------------------------------------------------------------------


def test_a_huge_event_is_truncated_in_the_request(fake_ai: FakeAI) -> None:
    huge = {"blob": "x" * 200_000, "rows": [{"i": i, "name": "ü" * 50} for i in range(2000)]}
    OpenAIProcessor().insight(
        job(
            data=huge,
            kind="state_change",
            facts={"previous": None, "current": huge},
            context=RecordContext(
                signal_events_7d=0, events_7d=0, states={"big": huge}, recent_insights=[]
            ),
        )
    )

    [request] = fake_ai.received
    # Three sections of at most 8 KB each, plus the fixed prompt and JSON overhead.
    assert len(request.raw) < 4 * MAX_SECTION_BYTES
    user = request.user
    data = user["event"]["data"]
    assert data["_truncated"] is True
    assert data["bytes"] > 200_000
    assert len(data["excerpt"].encode()) <= MAX_SECTION_BYTES
    assert data["excerpt"].startswith('{"blob":"xxxx')
    assert user["facts"]["_truncated"] is True
    assert user["record_context"]["_truncated"] is True
    # The small parts are untouched.
    assert user["event"]["identity"] == {"type": "account", "id": "001ABC000000123"}


def test_an_event_just_within_the_limit_is_sent_whole(fake_ai: FakeAI) -> None:
    # {"blob":"..."} is 11 bytes of JSON around the string.
    data = {"blob": "y" * (MAX_SECTION_BYTES - 11)}
    OpenAIProcessor().insight(job(data=data))

    assert fake_ai.received[0].user["event"]["data"] == data


# Transient failures ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 408])
def test_rate_limits_and_server_errors_are_transient(fake_ai: FakeAI, status: int) -> None:
    fake_ai.answer(Reply(status=status, body={"error": {"message": "try later"}}))

    with pytest.raises(TransientProcessingError) as raised:
        OpenAIProcessor().insight(job())
    assert f"HTTP {status}" in str(raised.value)
    assert "try later" in str(raised.value)


def test_a_timeout_is_transient(fake_ai: FakeAI, settings: Any) -> None:
    settings.BIGMIND_AI_TIMEOUT_SECONDS = 0.3
    fake_ai.answer(Reply(delay=3.0))

    with pytest.raises(TransientProcessingError) as raised:
        OpenAIProcessor().insight(job())
    assert "timed out after 0.3s" in str(raised.value)


def test_a_refused_connection_is_transient(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more.
    settings.BIGMIND_AI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    settings.BIGMIND_AI_API_KEY = API_KEY

    with pytest.raises(TransientProcessingError) as raised:
        OpenAIProcessor().insight(job())
    assert "unreachable" in str(raised.value)
    assert API_KEY not in str(raised.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<html>Bad gateway</html>", "non-JSON body"),
        ({"object": "chat.completion", "choices": []}, "no choices[0].message.content"),
        ({"error": {"message": "overloaded"}}, "overloaded"),
        (completion(None), "finish_reason stop"),  # type: ignore[arg-type]
        (completion("I think this account is hot."), "not a JSON object"),
        (completion('{"summary": "cut off', finish_reason="length"), "finish_reason length"),
        (completion("[1, 2, 3]"), "not a JSON object"),
        (completion(json.dumps({**GOOD, "score": 150})), "at $.score"),
        (completion(json.dumps({**GOOD, "score": "high"})), "at $.score"),
        (completion(json.dumps({**GOOD, "reasons": []})), "at $.reasons"),
        (completion(json.dumps({**GOOD, "confidence": 0.9})), "confidence"),
        (
            completion(json.dumps({k: v for k, v in GOOD.items() if k != "next_action"})),
            "at $: 'next_action' is a required",
        ),
        (completion(json.dumps({**GOOD, "summary": ""})), "at $.summary"),
    ],
    ids=[
        "html",
        "no-choices",
        "error-object",
        "null-content",
        "prose",
        "truncated",
        "array",
        "score-too-high",
        "score-not-int",
        "no-reasons",
        "extra-key",
        "missing-key",
        "empty-summary",
    ],
)
def test_an_unusable_answer_is_transient(fake_ai: FakeAI, body: Any, expected: str) -> None:
    fake_ai.answer(Reply(body=body))

    with pytest.raises(TransientProcessingError) as raised:
        OpenAIProcessor().insight(job())
    assert expected in str(raised.value)


def test_an_oversized_answer_is_transient_and_not_read_whole(fake_ai: FakeAI) -> None:
    fake_ai.answer(Reply(body=b"x" * (3 * 1024 * 1024)))

    with pytest.raises(TransientProcessingError, match="more than"):
        OpenAIProcessor().insight(job())


# Permanent failures ------------------------------------------------------------------------


def test_a_rejected_key_is_permanent_and_the_key_is_not_in_the_message(fake_ai: FakeAI) -> None:
    # Some proxies echo the header they rejected; the message must not repeat it.
    fake_ai.answer(
        Reply(
            status=401,
            body={"error": {"message": f"Incorrect API key provided: {API_KEY}"}},
        )
    )

    with pytest.raises(PermanentProcessingError) as raised:
        OpenAIProcessor().insight(job())
    message = str(raised.value)
    assert "HTTP 401" in message
    assert "Incorrect API key provided" in message
    assert API_KEY not in message


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_client_errors_are_permanent(fake_ai: FakeAI, status: int) -> None:
    fake_ai.answer(Reply(status=status, body="model 'nope' not found " + "z" * 5000))

    with pytest.raises(PermanentProcessingError) as raised:
        OpenAIProcessor().insight(job())
    message = str(raised.value)
    assert f"HTTP {status}" in message and "model 'nope' not found" in message
    # A short excerpt, not the whole body.
    assert len(message) < 500


def test_a_redirect_is_permanent_and_not_followed(fake_ai: FakeAI) -> None:
    fake_ai.answer(Reply(status=301, body="", headers={"Location": "https://elsewhere.test/v1"}))

    with pytest.raises(PermanentProcessingError, match="BIGMIND_AI_BASE_URL"):
        OpenAIProcessor().insight(job())
    assert len(fake_ai.received) == 1


def test_a_malformed_base_url_is_permanent(settings: Any) -> None:
    settings.BIGMIND_AI_BASE_URL = "localhost:11434/v1"

    with pytest.raises(PermanentProcessingError):
        OpenAIProcessor().insight(job())


# Through the pipeline ----------------------------------------------------------------------


@pytest.fixture
def openai_pipeline(fake_ai: FakeAI, settings: Any) -> Iterator[mock.MagicMock]:
    """BIGMIND_PROCESSOR=openai on the fake endpoint; publishes recorded, no broker."""
    settings.BIGMIND_PROCESSOR = "openai"
    settings.BIGMIND_PROCESSING_MAX_ATTEMPTS = 5
    processor_get.cache_clear()
    with mock.patch("events_app.tasks.process_event_task.apply_async") as later:
        yield later
    processor_get.cache_clear()


@pytest.fixture
def documented_signal(tenant: Tenant):
    return tenant.signal(
        "visited-documentation-page",
        description="Someone at the account read a documentation page.",
        ai_instructions="The quickstart means they are about to try the product.",
    )


def ingest(api: ApiClient) -> str:
    response = api.post("/v1/events", SEED_REQUEST)
    assert response.status_code == 202, response.content
    return response.json()["data"]["id"]


def test_the_pipeline_stores_the_models_insight(
    api: ApiClient, documented_signal: Any, fake_ai: FakeAI, openai_pipeline: mock.MagicMock
) -> None:
    event_id = ingest(api)

    events_process(event_ids=[event_id])

    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.COMPLETED, event.last_error
    assert event.result is not None
    assert event.result["processor"] == {"name": "openai", "version": f"2/{MODEL}"}
    assert event.result["insight"]["summary"] == GOOD["summary"]
    insight = Insight.objects.get(event_id=event_id)
    assert (insight.processor, insight.processor_version) == ("openai", f"2/{MODEL}")
    assert (insight.score, insight.next_action) == (GOOD["score"], GOOD["next_action"])
    assert insight.reasons == GOOD["reasons"]
    [request] = fake_ai.received
    assert "Someone at the account read a documentation page." in request.system
    assert "The quickstart means they are about to try the product." in request.system
    assert request.user["event"]["data"] == SEED_REQUEST["data"]
    assert request.user["event"]["identity"] == SEED_REQUEST["identity"]
    assert request.user["record_context"]["events_7d"] == 0
    openai_pipeline.assert_not_called()


def test_a_503_puts_the_event_back_to_pending_with_a_backoff(
    api: ApiClient, documented_signal: Any, fake_ai: FakeAI, openai_pipeline: mock.MagicMock
) -> None:
    fake_ai.answer(Reply(status=503, body={"error": {"message": "overloaded"}}))
    event_id = ingest(api)
    before = timezone.now()

    events_process(event_ids=[event_id])

    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.PENDING
    assert event.attempts == 1
    assert "503" in event.last_error
    assert event.due_at is not None and event.due_at > before
    assert not Insight.objects.filter(event_id=event_id).exists()
    # The retry is scheduled with the same backoff the row records.
    [call] = openai_pipeline.call_args_list
    assert call.args[0] == (event_id, event.received_at.isoformat())
    assert call.kwargs["countdown"] > 0


def test_a_rejected_key_fails_the_event_at_once(
    api: ApiClient, documented_signal: Any, fake_ai: FakeAI, openai_pipeline: mock.MagicMock
) -> None:
    fake_ai.answer(Reply(status=401, body={"error": {"message": f"bad key {API_KEY}"}}))
    event_id = ingest(api)

    events_process(event_ids=[event_id])

    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.FAILED
    assert event.attempts == 1
    assert "401" in event.last_error
    assert API_KEY not in event.last_error
    assert not Insight.objects.filter(event_id=event_id).exists()
    openai_pipeline.assert_not_called()
