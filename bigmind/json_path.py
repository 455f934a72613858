"""The one notation the project uses to name a place in a JSON document for a user: `$.a.b[0]`.

It is the notation of jsonschema's `ValidationError.json_path`, which the API already answers in
a schema violation's `details`, so every location a user reads (violations, an invalid schema,
schema-compatibility reasons) is written the same way:

- `$` is the document itself (for `data`: the event's `data` object);
- `.name` is a member whose name is a simple identifier (`^[a-zA-Z][a-zA-Z0-9_]*$`), any
  other name is `['name']` with `\\` and `'` escaped by a backslash;
- `[0]` is an array item by position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# jsonschema's own rule (`jsonschema.exceptions._JSON_PATH_COMPATIBLE_PROPERTY_PATTERN`), copied
# because it is private: a name matching it is written `.name`, so both render alike.
_SIMPLE_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")

ROOT = "$"


def json_path_member(path: str, name: str) -> str:
    """`path` followed by the member `name`."""
    if _SIMPLE_NAME.match(name):
        return f"{path}.{name}"
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"{path}['{escaped}']"


def json_path(parts: Iterable[str | int]) -> str:
    """The location reached from the root by `parts` (member names and item positions).

    >>> json_path(["a", 0, "b c"])
    "$.a[0]['b c']"
    """
    path = ROOT
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else json_path_member(path, part)
    return path


def detail_line(detail: Mapping[str, object]) -> str:
    """One `details` item (a violation or a compatibility reason) as a line for a person:
    `$.tier (enum): value 'gold' no longer allowed`; the keyword is left out when empty."""
    path, keyword, message = detail.get("path"), detail.get("keyword"), detail.get("message", "")
    where = f"{path} ({keyword})" if path and keyword else str(path or "")
    return f"{where}: {message}" if where else str(message)
