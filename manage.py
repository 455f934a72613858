#!/usr/bin/env python
from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigmind.settings")
    from bigmind.local_env import env_file_load
    from bigmind.startup import settings_load_or_exit

    # The local .env that `make run` writes (never over the real environment), so that the
    # commands work outside `make run` as the README prints them (bigmind/local_env.py).
    env_file_load()
    settings_load_or_exit("manage.py")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
