from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import CommandError, CommandParser

from signals_app.management.commands._base import ControlPlaneCommand, run_service
from signals_app.signals_as_code import signals_sync


class Command(ControlPlaneCommand):
    help = (
        "Apply signals-as-code from a YAML or JSON file: create missing signals, update "
        "settings, add new schema versions. Refuses (changing nothing) to alter an existing "
        "version."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="path to a .yaml/.yml/.json file, or - for stdin")

    def handle(self, *args: Any, file: str, **options: Any) -> None:
        import sys

        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from exc
        try:
            # YAML is a superset of JSON, so stdin and .yaml files may be either.
            document = json.loads(text) if file.endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise CommandError(f"{file} is not valid YAML/JSON: {exc}") from exc
        try:
            # What is stored is JSON: YAML-only values (dates, integer keys) are refused or
            # normalised now, so that a second run compares equal to what the first stored.
            document = json.loads(json.dumps(document))
        except (TypeError, ValueError) as exc:
            raise CommandError(
                f"{file} holds a value JSON cannot represent (quote dates in YAML): {exc}"
            ) from exc
        report = run_service(signals_sync, document=document)
        for line in report.lines():
            self.stdout.write(line)
