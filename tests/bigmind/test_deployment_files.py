"""docker-compose.yml and Dockerfile against the code, so that neither drifts from it silently:
the commands name things that exist, the variables set are ones the code reads, one beat, every
queue consumed, and the file's environment passes `check --deploy`.

Docker itself is not needed: the files are read as data.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings as django_settings
from django.core.management import get_commands
from django.test import Client
from packaging.requirements import Requirement

from bigmind.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_SERVICES = {"migrate", "web", "worker", "webhooks", "beat"}
# Read by a library, not by a line of ours that the scan below would find.
_READ_ELSEWHERE = {
    # prometheus_client (multiprocess mode); bigmind/metrics.py and gunicorn_conf.py too.
    "PROMETHEUS_MULTIPROC_DIR",
}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def image_services() -> dict[str, dict[str, Any]]:
    """The services that run the project's image (built from Dockerfile)."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)[1])
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def shell_commands(command: list[str]) -> list[list[str]]:
    """`sh -c "a && b"` is two commands; anything else is one."""
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;", command[2])]
    return [command]


def all_commands() -> list[tuple[str, list[str]]]:
    return [
        (name, cmd)
        for name, svc in image_services().items()
        for cmd in shell_commands(command_of(svc))
    ]


def option(command: list[str], *names: str) -> str:
    for index, part in enumerate(command):
        if part in names:
            return command[index + 1]
    raise AssertionError(f"{names} not in {command}")


def variables_read_by_the_code() -> set[str]:
    settings_source = (ROOT / "bigmind" / "settings.py").read_text()
    gunicorn_source = (ROOT / "bigmind" / "gunicorn_conf.py").read_text()
    names = set(re.findall(r"\benv(?:\.\w+)?\(\s*\"([A-Z][A-Z0-9_]*)\"", settings_source))
    names |= set(
        re.findall(r"(?:os\.environ\.get|_int|_bool)\(\s*\"([A-Z][A-Z0-9_]*)\"", gunicorn_source)
    )
    return names | _READ_ELSEWHERE


def interpolated(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR:?error}` with the default, or a generated value."""

    def replace(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if kind == ":-":
            return rest
        if name in ("DJANGO_SECRET_KEY", "BIGMIND_REDACTION_KEY"):
            return secrets.token_urlsafe(50)
        return secrets.token_urlsafe(16)

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", replace, str(value))


def test_it_runs_the_release_step_web_workers_and_beat_from_the_project_image() -> None:
    assert set(image_services()) == IMAGE_SERVICES
    assert {"postgres", "redis", "proxy"} <= set(services())
    for name, svc in image_services().items():
        assert svc["build"] == ".", name
    assert (ROOT / compose()["x-app"]["build"] / "Dockerfile").is_file()


def test_every_service_it_depends_on_exists_and_the_release_step_runs_first() -> None:
    names = set(services())
    for name, svc in services().items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in names, (name, dependency)
    for name in ("web", "worker", "webhooks", "beat"):
        assert services()[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    migrate = command_of(services()["migrate"])
    assert services()["migrate"]["restart"] == "no"
    assert "check --deploy --fail-level WARNING" in migrate[2]
    assert migrate[2].index("check") < migrate[2].index("migrate")


def test_every_management_command_it_runs_exists() -> None:
    known = get_commands()
    ran = [cmd for _, cmd in all_commands() if cmd[:2] == ["python", "manage.py"]]

    assert ran
    for cmd in ran:
        assert cmd[2] in known, cmd
    assert (ROOT / "manage.py").is_file()


def test_web_runs_gunicorn_with_the_repository_config_and_wsgi_app() -> None:
    web = command_of(services()["web"])

    assert web[0] == "gunicorn"
    assert (ROOT / option(web, "-c", "--config")).is_file()
    assert option(web, "-c") == "bigmind/gunicorn_conf.py"
    module = web[-1].split(":")[0]
    assert importlib.util.find_spec(module) is not None
    # The image's default command is the same web process.
    assert command_of({}) == web


def test_workers_and_beat_run_the_bigmind_celery_app() -> None:
    celery_commands = [(name, cmd) for name, cmd in all_commands() if cmd[0] == "celery"]

    assert {name for name, _ in celery_commands} == {"worker", "webhooks", "beat"}
    for _, cmd in celery_commands:
        assert option(cmd, "-A", "--app") == celery_app.main == "bigmind"
        assert importlib.util.find_spec(option(cmd, "-A", "--app") + ".celery") is not None


def test_every_queue_the_workers_consume_exists_and_every_queue_has_a_consumer() -> None:
    declared = {queue.name for queue in celery_app.conf.task_queues}
    routed = {route["queue"] for route in django_settings.CELERY_TASK_ROUTES.values()}
    routed.add(django_settings.CELERY_TASK_DEFAULT_QUEUE)

    consumed: set[str] = set()
    for _, cmd in all_commands():
        if cmd[:4] == ["celery", "-A", "bigmind", "worker"]:
            consumed |= set(option(cmd, "-Q", "--queues").split(","))

    assert consumed <= declared
    assert routed <= consumed


def test_webhooks_are_sent_by_their_own_workers_above_the_per_endpoint_cap() -> None:
    """A send waits on someone else's server: more worker processes than one endpoint may hold
    (BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT), so a slow receiver cannot take them all; and
    no processing worker consumes `webhooks`."""
    webhooks = command_of(services()["webhooks"])
    assert option(webhooks, "-Q", "--queues") == "webhooks"
    # Prefork: Celery's time limits apply to it (the threads pool has none).
    assert option(webhooks, "--pool", "-P") == "prefork"
    processes = int(option(webhooks, "--concurrency", "-c"))
    assert processes > django_settings.BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT
    worker = command_of(services()["worker"])
    assert "webhooks" not in option(worker, "-Q", "--queues").split(",")
    assert services()["webhooks"]["stop_grace_period"] == "30s"  # longer than one attempt


def test_it_runs_exactly_one_beat() -> None:
    beats = [name for name, cmd in all_commands() if cmd[:1] == ["celery"] and "beat" in cmd]

    assert beats == ["beat"]
    assert services()["beat"].get("deploy", {}).get("replicas", 1) == 1
    # Beat's schedule file lives in BIGMIND_VAR_DIR, which its volume keeps.
    var_dir = re.search(r"BIGMIND_VAR_DIR=(\S+)", DOCKERFILE.read_text())[1]
    assert any(v.endswith(":" + var_dir) for v in services()["beat"]["volumes"])


def test_every_variable_the_app_services_set_is_read_by_the_code() -> None:
    read = variables_read_by_the_code()
    dockerfile_env = re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]*)=", DOCKERFILE.read_text(), re.M)

    for name, svc in image_services().items():
        unread = sorted(set(svc.get("environment", {})) - read)
        assert unread == [], name
    # Python's and pip's own variables aside.
    ours = [v for v in dockerfile_env if not v.startswith(("PYTHON", "PIP_"))]
    assert ours
    assert set(ours) <= read


def test_its_environment_passes_the_release_gate(tmp_path: Path) -> None:
    # The release step's environment: it is the one that runs the gate.
    environment = {
        key: interpolated(value) for key, value in services()["migrate"]["environment"].items()
    }
    environment["BIGMIND_VAR_DIR"] = str(tmp_path)
    # PATH and the like; nothing Django reads.
    base = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME")}
    # Nor a developer's local .env (manage.py would read it; the image has none).
    base["BIGMIND_ENV_FILE"] = ""

    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_the_web_health_check_reaches_readyz_over_plain_http_with_an_ip_as_host(
    settings: Any,
) -> None:
    settings.ALLOWED_HOSTS = ["signals.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    check = " ".join(services()["web"]["healthcheck"]["test"])
    url = re.search(r"http://([\d.]+:\d+)(/\w+)", check)
    assert url is not None, check
    host, path = url.group(1), url.group(2)

    response = Client().get(path, HTTP_HOST=host)

    # 503 would be a dependency down in this test environment; never a 400 (host) or 301.
    assert response.status_code in (200, 503)
    assert host.endswith(":8000")


def test_the_proxy_forwards_to_web_on_the_port_gunicorn_binds() -> None:
    caddyfile = compose()["configs"]["caddyfile"]["content"]
    bind = services()["web"]["environment"]["GUNICORN_BIND"]

    assert "name web" in caddyfile
    assert f"port {bind.rsplit(':', 1)[1]}" in caddyfile
    assert "web" in services()["proxy"]["depends_on"]
    # The largest API body (the batch) must get through the proxy's limit.
    limit_mb = int(re.search(r"max_size (\d+)MB", caddyfile)[1])
    assert limit_mb * 1_000_000 > django_settings.BIGMIND_BATCH_MAX_BODY_BYTES


def test_the_image_installs_the_runtime_requirements_and_copies_what_exists() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^RUN pip install -r requirements\.txt$", dockerfile, re.M)
    instructions = [line for line in dockerfile.splitlines() if not line.startswith("#")]
    assert not any("requirements-dev" in line for line in instructions)
    runtime = (ROOT / "requirements.txt").read_text()
    for package in ("Django", "gunicorn", "celery", "psycopg", "whitenoise"):
        assert package in runtime
    for tool in ("pytest", "ruff", "mypy", "schemathesis", "playwright", "hypothesis"):
        assert tool not in runtime.lower(), tool

    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    for package in ("bigmind", "signals_app", "events_app", "templates"):
        assert f"COPY {package} " in dockerfile


def test_no_secret_has_a_default_in_the_compose_file() -> None:
    text = COMPOSE.read_text()

    for name in ("DJANGO_SECRET_KEY", "BIGMIND_REDACTION_KEY", "POSTGRES_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"(:.)?", text)
        assert uses
        assert all(kind == ":?" for kind in uses), name


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_closure() -> set[str]:
    """The runtime requirements of the image, and everything they pull in on Linux."""
    section = (ROOT / "requirements.txt").read_text()
    wanted = [
        Requirement(line)
        for line in (raw.strip() for raw in section.splitlines())
        if line and not line.startswith("#")
    ]
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        if _canonical(requirement.name) in seen:
            continue
        seen.add(_canonical(requirement.name))
        for text in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in extras
            ):
                wanted.append(dependency)
    return seen


def test_the_image_installs_every_package_the_app_imports() -> None:
    imported: set[str] = set()
    for package in ("bigmind", "signals_app", "events_app"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module.split(".")[0])
    ours = {"bigmind", "signals_app", "events_app", "__future__"}
    third_party = imported - set(sys.stdlib_module_names) - ours
    distributions = importlib.metadata.packages_distributions()
    installed = _runtime_closure()

    missing = sorted(
        module
        for module in third_party
        if not any(_canonical(d) in installed for d in distributions.get(module, [module]))
    )

    assert missing == []
    # INSTALLED_APPS that no module imports by name.
    for app in ("whitenoise", "drf-spectacular-sidecar"):
        assert app in installed
