"""The serializer fields of the /v1 shapes: each renders a value as the API always has and
tells drf-spectacular the exact OpenAPI schema of it (example, format, enum...).

The response serializers render stored values that are JSON-ready already, so most fields
here pass the value through untouched (a FloatField would turn the integer 3 into 3.0, and the
answers must stay byte for byte what they were); date-times get the API's `Z` form.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers

from bigmind.api_time import iso_utc

Schema = dict[str, Any]
DATE_TIME_EXAMPLE = "2026-03-16T12:00:00Z"


class Documented:
    """A field with its OpenAPI type (`openapi_type`) and extra keywords (`example`, and
    `schema` for any other). drf-spectacular adds what the field's arguments say (nullable,
    description, maxLength, minimum...)."""

    openapi_type: Schema = {}

    def __init__(
        self, *args: Any, example: Any = None, schema: Schema | None = None, **kwargs: Any
    ):
        self.example = example
        self.schema_extra = schema or {}
        super().__init__(*args, **kwargs)


class DocumentedExtension(OpenApiSerializerFieldExtension):
    target_class = Documented
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: str) -> Schema:
        field = self.target
        schema = dict(field.openapi_type)
        if field.example is not None:
            schema["example"] = field.example
        schema.update(field.schema_extra)
        return schema


class Text(Documented, serializers.CharField):
    openapi_type = {"type": "string"}


class Integer(Documented, serializers.IntegerField):
    openapi_type = {"type": "integer"}

    def to_representation(self, value: Any) -> Any:
        return value


class Boolean(Documented, serializers.BooleanField):
    openapi_type = {"type": "boolean"}

    def to_representation(self, value: Any) -> Any:
        return value


class Choice(Documented, serializers.ChoiceField):
    def __init__(self, choices: list[Any], **kwargs: Any) -> None:
        kind = "integer" if all(isinstance(choice, int) for choice in choices) else "string"
        self.openapi_type = {"type": kind, "enum": list(choices)}
        super().__init__(choices, **kwargs)

    def to_representation(self, value: Any) -> Any:
        return value


class Uuid(Documented, serializers.UUIDField):
    openapi_type = {"type": "string", "format": "uuid"}


class Passed(Documented, serializers.Field):
    """A value rendered as it is stored; its schema is the `schema` given."""

    def to_representation(self, value: Any) -> Any:
        return value


class Number(Passed):
    openapi_type = {"type": "number"}


class FreeObject(Passed):
    openapi_type = {"type": "object", "additionalProperties": True}


class DateTime(Documented, serializers.Field):
    """An aware date-time in the API's form: ISO 8601, UTC, `Z`."""

    openapi_type = {"type": "string", "format": "date-time", "example": DATE_TIME_EXAMPLE}

    def to_representation(self, value: Any) -> Any:
        return iso_utc(value)


class Const(Documented, serializers.Field):
    """One fixed value (the envelope's `success`, a batch item's `status`...)."""

    def __init__(self, value: bool | str, **kwargs: Any) -> None:
        self.value = value
        kind = "boolean" if isinstance(value, bool) else "string"
        self.openapi_type = {"type": kind, "enum": [value]}
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        return self.value

    def get_attribute(self, instance: Any) -> Any:
        return self.value


class PassedList(serializers.ListField):
    """A list rendered as it is stored (its items' schema is the `child`'s)."""

    def to_representation(self, data: Any) -> Any:
        return data
