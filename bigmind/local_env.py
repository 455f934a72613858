"""The local `.env` file: what `make run` uses, kept so that `manage.py` run by hand uses it too.

`make run` calls `python -m bigmind.local_env` first: it adds to `.env` (in the repository root,
gitignored) the variables it needs and the file does not set yet: a DJANGO_SECRET_KEY
generated once, DJANGO_DEBUG=true and LOG_FORMAT=plain. It never replaces a line that is
there. `manage.py` and scripts/run_local.py then load the file into their environment without
overriding a variable that is already set, so `.venv/bin/python manage.py revoke_api_key ...`
works as the README prints it.

docker-compose.yml reads the same file, but only for the variables it names (DJANGO_SECRET_KEY,
POSTGRES_PASSWORD, BIGMIND_DOMAIN, DJANGO_SECURE_HSTS_SECONDS): the generated secret key is a
valid one for it (67 random characters), and the others are not passed to any container.

Not loaded by bigmind/settings.py: the test suite, gunicorn and Celery in production read the
real environment only. BIGMIND_ENV_FILE names another file; set to an empty value, no file is
read (the test suite does that, so a developer's file never changes what a test's subprocess
sees).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import environ

ROOT = Path(__file__).resolve().parent.parent

HEADER = """\
# Local settings of this checkout, for `make run` and `manage.py` (bigmind/local_env.py).
# `make run` adds what it needs and is missing; it never changes a line that is here, and a
# variable set in the environment wins over this file. docker compose reads this file too, for
# the variables docker-compose.yml names. Never commit it (.gitignore).
"""


def env_file_path() -> Path | None:
    """The file to read: BIGMIND_ENV_FILE if set (empty: none), else `.env` in the root."""
    configured = os.environ.get("BIGMIND_ENV_FILE")
    if configured is None:
        return ROOT / ".env"
    if not configured.strip():
        return None
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path


def env_file_load() -> Path | None:
    """Set the file's variables that the environment does not set already; the file read."""
    path = env_file_path()
    if path is None or not path.is_file():
        return None
    environ.Env.read_env(path, overwrite=False)
    return path


def _names_set(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if line and not line.startswith("#") and "=" in line:
            names.add(line.split("=", 1)[0].strip())
    return names


def local_env_write(path: Path) -> list[str]:
    """Add to `path` what `make run` uses and it does not set; the names added."""
    wanted = {
        # Generated once, then kept: sessions and signed links survive restarts.
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "true",
        "LOG_FORMAT": "plain",
    }
    existing = path.read_text() if path.exists() else ""
    present = _names_set(path) if path.exists() else set()
    missing = [name for name in wanted if name not in present]
    if not missing:
        return []
    text = existing if existing else HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(f"{name}={wanted[name]}\n" for name in missing)
    path.write_text(text)
    if not existing:
        path.chmod(0o600)  # it holds a secret
    return missing


def main() -> int:
    path = env_file_path()
    if path is None:
        return 0
    added = local_env_write(path)
    if added:
        print(f"{path.name}: added {', '.join(added)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
