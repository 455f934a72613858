"""Run pytest and treat "no tests collected" (exit 5) as the failure it is."""

from __future__ import annotations

import sys

import pytest

if __name__ == "__main__":
    code = pytest.main(sys.argv[1:])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("pytest collected no tests: failing", file=sys.stderr)
        sys.exit(1)
    sys.exit(int(code))
