"""The abuse suite's request counter: every generated request is counted, and the total is
printed at the end of the run (and checked by the last test of test_fuzz_properties.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

# (endpoint, status) -> number of generated requests sent through the HTTP stack.
GENERATED_REQUESTS: Counter[tuple[str, int]] = Counter()


def generated_total() -> int:
    return sum(GENERATED_REQUESTS.values())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not GENERATED_REQUESTS:
        return
    by_endpoint: dict[str, Counter[int]] = {}
    for (endpoint, status), count in GENERATED_REQUESTS.items():
        by_endpoint.setdefault(endpoint, Counter())[status] += count
    terminalreporter.section("abuse suite: generated requests")
    for endpoint, statuses in sorted(by_endpoint.items()):
        detail = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        terminalreporter.write_line(f"{endpoint}: {sum(statuses.values())} ({detail})")
    terminalreporter.write_line(f"total: {generated_total()} generated requests, no 5xx")
