"""What the compatibility check reports: one problem per reason, and the error that refuses a
schema version for them."""

from __future__ import annotations

from dataclasses import dataclass

from bigmind.errors import BadRequest
from bigmind.json_path import detail_line


class SchemaIncompatible(BadRequest):
    code = "schema_incompatible"


@dataclass(frozen=True)
class CompatibilityProblem:
    path: str  # where in the data, in the API's JSON path notation (bigmind.json_path)
    message: str
    keyword: str = ""  # the schema keyword the reason is about, when it is about one

    def __str__(self) -> str:
        return detail_line(self.as_detail())

    def as_detail(self) -> dict[str, str]:
        # The keys of a schema violation's details, so that clients read both alike.
        return {"path": self.path, "message": self.message, "keyword": self.keyword}
