"""What every /v1 resource module shares: the base view, the request body reader, the success
envelope and the query parameters of the paged lists."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, UnreadablePostError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from bigmind.errors import ApplicationError, BadRequest, PayloadTooLarge
from events_app.api.scopes import ScopedApiKeyAuthentication

LIST_DEFAULT_LIMIT = 50
LIST_MAX_LIMIT = 100


class ApiView(APIView):
    """The base of every keyed /v1 view: an organization's API key, nothing else, holding the
    scope its route and method need (events_app/api/scopes.py)."""

    authentication_classes = [ScopedApiKeyAuthentication]
    permission_classes = [IsAuthenticated]


def success(data: Any, **extra: Any) -> dict[str, Any]:
    """The success envelope (SPEC §2): `success`, `data`, then any extra top-level fields."""
    return {"success": True, "data": data, **extra}


def _body_incomplete() -> BadRequest:
    return BadRequest(
        "Request body is incomplete: the connection ended before the body did",
        code="body_incomplete",
    )


def request_body_read(request: HttpRequest | Request, *, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` before reading it, and (400) a body
    that ends before its Content-Length or its last chunk (RFC 9112: such a message is
    incomplete, so it must not be taken for a whole one)."""
    meta = request.META
    too_large = PayloadTooLarge(f"Request body is too large: the limit is {limit} bytes")
    length_header = meta.get("CONTENT_LENGTH") or ""
    if length_header:
        try:
            length = int(length_header)
        except ValueError:
            length = 0
        if length > limit:
            raise too_large
        try:
            # A DRF Request passes `body` through to its HttpRequest.
            raw = request.body
        except UnreadablePostError as exc:
            raise _body_incomplete() from exc
        if len(raw) < length:
            # gunicorn hands over what came before the client closed, without an error.
            raise _body_incomplete()
        return raw
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        # gunicorn hands chunked bodies to the app with no Content-Length, decoded, and says so
        # with `wsgi.input_terminated`. A server that does not (runserver, wsgiref) hands over
        # nothing: refuse that plainly, rather than calling a valid body empty (issue #12).
        if not meta.get("wsgi.input_terminated"):
            raise ApplicationError(
                "This server cannot read a chunked request body; send it with Content-Length",
                status_code=411,
                code="length_required",
            )
        # Read one byte past the limit to tell "at the limit" from "over it".
        try:
            raw = meta["wsgi.input"].read(limit + 1)
        except Exception as exc:
            # The server's own framing errors (gunicorn: NoMoreData, InvalidChunkSize,
            # ChunkMissingTerminator) are the client's fault, not a 500.
            raise _body_incomplete() from exc
        if len(raw) > limit:
            raise too_large
        return raw
    return b""


# --- Query parameters -------------------------------------------------------------------------
# Each list declares its parameters once, as a serializer: it parses the query string and
# drf-spectacular writes the document's parameters from it. An empty parameter is the same as
# leaving it out. The messages are the API's (docs/api.md), not DRF's.
def invalid_parameter(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_parameter")


def _refuse_nul(name: str, value: str) -> None:
    if "\x00" in value:
        # Nothing stored holds NUL, and PostgreSQL refuses it even as a parameter.
        raise serializers.ValidationError(f"{name} must not contain a NUL character")


class QueryText(serializers.CharField):
    """An exact-match filter, at most as long as the column it matches."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, allow_blank=True, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = str(data)
        _refuse_nul(self.field_name, value)
        if self.max_length is not None and len(value) > self.max_length:
            raise serializers.ValidationError(
                f"{self.field_name} must be at most {self.max_length} characters"
            )
        return value


class QueryChoice(serializers.ChoiceField):
    """A filter on one of a fixed set of words."""

    def __init__(self, choices: list[str], **kwargs: Any) -> None:
        # Not blank: an empty parameter is left out before this field sees it.
        super().__init__(choices, required=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = str(data)
        _refuse_nul(self.field_name, value)
        if value not in self.choices:
            raise serializers.ValidationError(
                f"{self.field_name} must be one of {', '.join(self.choices)}"
            )
        return value


@extend_schema_field({"type": "string", "format": "date-time", "example": "2026-03-16T12:00:00Z"})
class QueryDateTime(serializers.Field):
    """An ISO 8601 date-time bound; no offset means UTC, as on ingest."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)

    def to_internal_value(self, data: Any) -> datetime:
        value = str(data)
        _refuse_nul(self.field_name, value)
        message = (
            f"{self.field_name} must be an ISO 8601 date-time, e.g. 2026-03-16T12:00:00Z "
            f"(percent-encode a '+' offset as %2B)"
        )
        if len(value) > 64:
            raise serializers.ValidationError(message)
        try:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError) as exc:
            raise serializers.ValidationError(message) from exc


class QueryLimit(serializers.IntegerField):
    """The page size."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            required=False,
            default=LIST_DEFAULT_LIMIT,
            min_value=1,
            max_value=LIST_MAX_LIMIT,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> int:
        value = str(data)
        message = f"{self.field_name} must be an integer from 1 to {LIST_MAX_LIMIT}"
        # Digits only, and few: int() takes "+5", " 5", non-ASCII digits, 4,300-digit numbers.
        if not (value.isascii() and value.isdigit()) or len(value) > 3:
            raise serializers.ValidationError(message)
        limit = int(value)
        if not 1 <= limit <= LIST_MAX_LIMIT:
            raise serializers.ValidationError(message)
        return limit


@extend_schema_field({"type": "string", "maxLength": 200})
class QueryCursor(serializers.Field):
    """The `next_cursor` of the previous page, as handed out; the selector checks it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            required=False, help_text="The `next_cursor` of the previous page.", **kwargs
        )

    def to_internal_value(self, data: Any) -> str:
        return str(data)


def query_parse(query: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """The query string through `query`: every declared parameter, None when absent or empty;
    the first wrong one (in declaration order) is a 400 `invalid_parameter`."""
    parsed = query(data=request.query_params)
    if not parsed.is_valid():
        first = next(iter(parsed.errors.values()))
        raise invalid_parameter(str(first[0]))
    values = parsed.validated_data
    return {name: values.get(name) or None for name in parsed.fields}
