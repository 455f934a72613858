#!/usr/bin/env python3
"""Print the fault suite's results (tests/reliability) as the Markdown table of docs/reliability.md.

    .venv/bin/python scripts/fault_report.py                 # $BIGMIND_VAR_DIR, else var/test
    .venv/bin/python scripts/fault_report.py var/ci-fault    # another run's var dir

Reads `<var dir>/fault-report/*.json`, one file per fault, written by the last run of each test.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability.report import (  # noqa: E402
    markdown_table,
    report_dir,
    rows_read,
    webhook_table,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "var_dir",
        nargs="?",
        # The default of pyproject.toml's pytest settings, where `make test` writes.
        default=os.environ.get("BIGMIND_VAR_DIR", "var/test"),
        help="the BIGMIND_VAR_DIR the suite ran with",
    )
    args = parser.parse_args()
    var_dir = Path(args.var_dir)
    if not var_dir.is_absolute():
        var_dir = ROOT / var_dir
    directory = report_dir(var_dir)
    rows = rows_read(directory) if directory.is_dir() else []
    if not rows:
        print(f"no fault suite results in {directory}", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    print()
    if deliveries := webhook_table(rows):
        print(deliveries)
        print()
    for row in rows:
        notes = f"; {row['notes']}" if row.get("notes") else ""
        print(f"- `{row['fault']}`: {row['description']}{notes} (finished {row['finished_at']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
