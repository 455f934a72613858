"""manage.py as an operator meets it (issue #12): a missing or invalid setting is one line on
stderr and exit status 1, and the local `.env` that `make run` writes makes the README's
management commands work outside `make run`. Every command runs in a subprocess with a clean
environment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bigmind import local_env

ROOT = Path(__file__).resolve().parents[2]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Django, database, broker or log setting; the embedded defaults in tmp_path; no .env
    unless a test names one."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "BIGMIND_", "CELERY_", "LOG_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "CACHE_URL")
    }
    env.update(BIGMIND_VAR_DIR=str(tmp_path / "var"), BIGMIND_ENV_FILE="")
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert lines[0].startswith("manage.py: configuration error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


def test_a_missing_secret_key_is_one_line_and_exit_1_whatever_the_command(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path)

    for command in (["revoke_api_key", "sk_AbCdEfGh"], ["migrate"], ["no_such_command"]):
        line = assert_one_line_error(manage(env, *command), "DJANGO_SECRET_KEY")
        # ... and says how to fix it.
        assert "make run" in line and ".env" in line


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BIGMIND_EVENT_MAX_BODY_BYTES", "a lot"),
        ("BIGMIND_SWEEP_INTERVAL_SECONDS", "soon"),
        ("LOG_FORMAT", "xml"),
        ("BIGMIND_METRICS_ALLOWED_NETWORKS", "not-a-network"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    env = clean_env(tmp_path, DJANGO_DEBUG="true", **{name: value})

    assert_one_line_error(manage(env, "check"), name)


def test_manage_reads_the_env_file_without_overriding_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "local.env"
    env_file.write_text(
        "# a comment\nDJANGO_SECRET_KEY=from-the-file-" + "x" * 50 + "\nLOG_FORMAT=xml\n"
    )
    env = clean_env(tmp_path, BIGMIND_ENV_FILE=str(env_file))

    # The file's LOG_FORMAT is read (and refused) ...
    assert_one_line_error(manage(env, "check"), "LOG_FORMAT")
    # ... unless the environment sets one: the environment wins.
    result = manage({**env, "LOG_FORMAT": "plain"}, "check")
    assert result.returncode == 0, result.stderr
    # An empty BIGMIND_ENV_FILE reads no file (the test suite's setting).
    assert_one_line_error(manage({**env, "BIGMIND_ENV_FILE": ""}, "check"), "DJANGO_SECRET_KEY")


def test_the_default_env_file_is_the_repository_root_dot_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BIGMIND_ENV_FILE", raising=False)
    assert local_env.env_file_path() == ROOT / ".env"
    monkeypatch.setenv("BIGMIND_ENV_FILE", "")
    assert local_env.env_file_path() is None
    monkeypatch.setenv("BIGMIND_ENV_FILE", "elsewhere.env")
    assert local_env.env_file_path() == ROOT / "elsewhere.env"
    # .env is never committed.
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_make_run_writes_what_is_missing_once_and_never_replaces_a_value(tmp_path: Path) -> None:
    path = tmp_path / ".env"

    assert local_env.local_env_write(path) == ["DJANGO_SECRET_KEY", "DJANGO_DEBUG", "LOG_FORMAT"]
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = next(line for line in first.splitlines() if line.startswith("DJANGO_SECRET_KEY="))
    assert len(key.split("=", 1)[1]) >= 50  # strong enough for check --deploy (W009)
    # Again: nothing added, the key kept.
    assert local_env.local_env_write(path) == []
    assert path.read_text() == first

    # A docker-compose .env written by hand: its values stay, only what is missing is added.
    compose = tmp_path / "compose.env"
    compose.write_text("DJANGO_SECRET_KEY=mine\nPOSTGRES_PASSWORD=pw\nexport DJANGO_DEBUG=false")
    assert local_env.local_env_write(compose) == ["LOG_FORMAT"]
    assert compose.read_text() == (
        "DJANGO_SECRET_KEY=mine\nPOSTGRES_PASSWORD=pw\nexport DJANGO_DEBUG=false\nLOG_FORMAT=plain\n"
    )


def test_the_readme_commands_work_outside_make_run_after_it(tmp_path: Path) -> None:
    """`make run` writes .env (python -m bigmind.local_env); later, in a shell with nothing
    set, the README's management commands work as printed."""
    env_file = tmp_path / ".env"
    env = clean_env(tmp_path, BIGMIND_ENV_FILE=str(env_file))
    written = subprocess.run(
        [sys.executable, "-m", "bigmind.local_env"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    assert env_file.is_file()

    for command in (
        ["migrate", "--noinput"],
        ["create_organization", "acme", "--name", "Acme Inc."],
    ):
        result = manage(env, *command)
        assert result.returncode == 0, result.stderr
    created = manage(env, "create_api_key", "--organization", "acme", "--name", "backend")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk_")
    revoked = manage(env, "revoke_api_key", key)
    assert revoked.returncode == 0, revoked.stderr
    assert "acme" in revoked.stdout


def test_make_run_writes_the_env_file_and_installs_only_the_runtime_packages() -> None:
    def recipe(target: str) -> list[str]:
        result = subprocess.run(
            ["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    run = recipe("run")
    installs = [line for line in run if "pip install" in line and " -r " in line]
    assert installs == [".venv/bin/python -m pip install --quiet -r requirements.txt"]
    steps = [line.split("python ", 1)[-1] for line in run]
    assert steps.index("-m bigmind.local_env") < steps.index("manage.py migrate --noinput")
    for target in ("test", "lint"):
        assert ".venv/bin/python -m pip install --quiet -r requirements-dev.txt" in recipe(target)

    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert next(line for line in dev if line and not line.startswith("#")) == "-r requirements.txt"
    runtime = (ROOT / "requirements.txt").read_text().lower()
    for tool in ("pytest", "hypothesis", "schemathesis", "playwright", "ruff", "mypy"):
        assert tool not in runtime, tool
        assert tool in "\n".join(dev).lower(), tool


def test_what_make_run_adds_to_env_never_reaches_a_compose_container() -> None:
    """docker compose reads .env too, but only for the variables docker-compose.yml names: the
    local DJANGO_DEBUG=true and LOG_FORMAT=plain must not be among them (nor an env_file)."""
    compose = (ROOT / "docker-compose.yml").read_text()

    assert "env_file" not in compose
    for name in ("DJANGO_DEBUG", "LOG_FORMAT"):
        assert "${" + name not in compose, name
    # The secret key it generates is what compose would take: it must satisfy compose's check.
    assert "${DJANGO_SECRET_KEY:?" in compose


@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_with_a_missing_setting_is_one_line_and_exit_1(tmp_path: Path, program: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "bigmind", program, "--loglevel", "INFO"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith("celery: configuration error: DJANGO_SECRET_KEY must be set")


def test_gunicorn_with_a_missing_setting_stops_with_the_one_line(tmp_path: Path) -> None:
    """bigmind.gunicorn_worker: the message alone, and gunicorn halts ("App failed to load")
    instead of booting workers again. One worker: with several, gunicorn 27 itself adds a
    HaltServer traceback after the lines while it stops the others."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gunicorn", "-c", "bigmind/gunicorn_conf.py", "-w", "1"),
            *("--bind", "127.0.0.1:0", "bigmind.wsgi"),
        ],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 4, result  # gunicorn's APP_LOAD_ERROR
    assert "Traceback" not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert ours == [
        "gunicorn: configuration error: DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
        "(production). Set it in the environment; on a development machine, `make run` once "
        "writes one to .env, which manage.py reads (README, 'Management commands')."
    ]
    assert "App failed to load" in result.stderr
