"""The `iri` and `iri-reference` JSON Schema formats, checked by the library jsonschema uses for
them (rfc3987-syntax, from the `format-nongpl` extra), but without paying for it in every process.

Why this is hand-written: importing rfc3987-syntax builds 39 Lark Earley parsers at module import,
about 1.5 s of CPU, and jsonschema imports it when jsonschema itself is imported. That was half of
the start-up of every process this project runs (gunicorn and Celery workers, each `manage.py`
command, each test that starts one), to serve two formats few schemas use. Neither library offers
a lazy switch, and `importlib.util.LazyLoader` cannot help: jsonschema's
`from rfc3987_syntax import is_valid_syntax` touches the module, which would load it.

So `defer_iri_grammar()` puts a small stand-in under the package's name before jsonschema is
imported. jsonschema registers its two format checks with the stand-in's `is_valid_syntax` as
usual; the first call imports the real `rfc3987_syntax.syntax_helpers` and delegates to it ever
after. Behaviour is unchanged: the same function decides, with the same grammar. The real import
runs in a fresh thread: building the parsers recurses deeply, and at the call depth of a request
CPython 3.11 maps and unmaps a frame-stack chunk over and over (hundreds of thousands of page
faults, seconds of system time); a new thread starts from an empty stack.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

PACKAGE = "rfc3987_syntax"
_lock = threading.Lock()
_real: Callable[[str, str], bool] | None = None


def _load() -> Callable[[str, str], bool]:
    global _real
    with _lock:
        if _real is None:
            # A fresh thread's empty stack (see above); an import error is re-raised here.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iri-grammar") as pool:
                helpers = pool.submit(importlib.import_module, f"{PACKAGE}.syntax_helpers")
                _real = helpers.result().is_valid_syntax
        return _real


def is_valid_syntax(term: str, value: str) -> bool:
    """rfc3987_syntax.is_valid_syntax, imported on first use."""
    return _load()(term, value)


def defer_iri_grammar() -> bool:
    """Stand in for rfc3987_syntax until a value is first checked against an IRI format.

    Returns whether the stand-in is in place. It is not when the package is absent (jsonschema
    then skips the two formats, as it would anyway) or already imported (too late to save
    anything, and nothing to change)."""
    if PACKAGE in sys.modules:
        return isinstance(sys.modules[PACKAGE], _StandIn)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        return False
    stand_in = _StandIn(PACKAGE, __doc__)
    # The real package's path, so that `rfc3987_syntax.syntax_helpers` imports as usual beneath
    # the stand-in; the package's own __init__ only re-exports that module's function.
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    stand_in.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = stand_in
    return True


class _StandIn(types.ModuleType):
    """rfc3987_syntax until its grammar is needed (see the module docstring)."""
