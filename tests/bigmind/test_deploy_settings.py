"""Production settings: `check --deploy` with the documented environment, secure cookies and
headers, the HTTPS redirect and its exemptions, the proxy header, debug off by default.

Settings are read from the environment once, at import, so each case runs in a fresh Python
process with exactly the environment under test (the production block of docs/deployment.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

# One xdist worker runs the whole module, so its module-scoped probe runs once, not once
# per worker that happens to get one of its tests.
pytestmark = pytest.mark.xdist_group("deploy-settings")

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
# Everything these tests set, cleared from the inherited environment first so that a variable
# of the machine or of CI cannot decide a case.
_CLEARED_PREFIXES = ("DJANGO_", "GUNICORN_", "FORWARDED_ALLOW_IPS")


def documented_production_env() -> dict[str, str]:
    """The KEY=value lines of the block that follows the `production-env` marker."""
    text = DEPLOYMENT_DOC.read_text()
    marker = text.index("<!-- production-env")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.S)
    assert block is not None, "docs/deployment.md: no ```sh block after the production-env marker"
    env: dict[str, str] = {}
    for line in block.group(1).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def strong_secret() -> str:
    return secrets.token_urlsafe(50)


def production_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_CLEARED_PREFIXES) and key != "DJANGO_SETTINGS_MODULE"
    }
    env.update(documented_production_env())
    # The documented ones are placeholders.
    env["DJANGO_SECRET_KEY"] = strong_secret()
    env["BIGMIND_REDACTION_KEY"] = strong_secret()
    env["BIGMIND_VAR_DIR"] = str(tmp_path / "var")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Runs in the child: Django's test client over the whole middleware stack, as gunicorn would
# call it, with the settings that environment produced. Prints what the test asserts on.
_PROBE = r"""
import json, os
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigmind.settings")
django.setup()
from django.conf import settings
from django.test import Client

host = settings.ALLOWED_HOSTS[0]
client = Client(HTTP_HOST=host)

def answer(response):
    cookies = {name: dict(morsel) for name, morsel in response.cookies.items()}
    return {
        "status": response.status_code,
        "location": response.headers.get("Location"),
        "headers": dict(response.headers),
        "cookies": cookies,
    }

out = {
    "debug": settings.DEBUG,
    "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
    "csrf_cookie_secure": settings.CSRF_COOKIE_SECURE,
    "https_login": answer(client.get("/admin/login/", secure=True)),
    "http_openapi": answer(client.get("/v1/openapi.json")),
    "http_forwarded_openapi": answer(
        client.get("/v1/openapi.json", HTTP_X_FORWARDED_PROTO="https")
    ),
    "http_probes": {
        path: answer(client.get(path))["status"] for path in ("/healthz", "/readyz", "/metrics")
    },
}
print(json.dumps(out))
"""


def probe(env: dict[str, str]) -> dict:
    # Headers and redirects only: the embedded database, cache and broker stand in for the
    # documented hosts, which do not exist here (a probe of /readyz would wait on them).
    env = {
        key: value
        for key, value in env.items()
        if key not in ("REDIS_URL", "CACHE_URL", "CELERY_BROKER_URL")
    }
    env["DATABASE_URL"] = f"sqlite:///{env['BIGMIND_VAR_DIR']}/db.sqlite3"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_passes_check_deploy_with_the_documented_production_environment(
    tmp_path: Path,
) -> None:
    result = check_deploy(production_env(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("missing", "warnings"),
    [
        (
            ("DJANGO_SECURE_HSTS_SECONDS", "DJANGO_SECURE_SSL_REDIRECT"),
            ["security.W004", "security.W008"],
        ),
        (("DJANGO_SECURE_HSTS_PRELOAD",), ["security.W021"]),
    ],
)
def test_it_fails_check_deploy_without_the_https_variables(
    tmp_path: Path, missing: tuple[str, ...], warnings: list[str]
) -> None:
    result = check_deploy(production_env(tmp_path, **dict.fromkeys(missing)))

    assert result.returncode != 0
    for warning in warnings:
        assert warning in result.stderr + result.stdout


def test_it_fails_check_deploy_with_a_weak_secret_key(tmp_path: Path) -> None:
    # 49 characters: one short of what Django's check asks for.
    result = check_deploy(production_env(tmp_path, DJANGO_SECRET_KEY=secrets.token_hex(25)[:49]))

    assert result.returncode != 0
    assert "security.W009" in result.stderr + result.stdout


@pytest.mark.parametrize(
    "redaction_key",
    [None, "DJANGO_SECRET_KEY", secrets.token_hex(25)[:49]],
    ids=["missing", "the secret key", "weak"],
)
def test_it_fails_check_deploy_without_a_strong_redaction_key_of_its_own(
    tmp_path: Path, redaction_key: str | None
) -> None:
    env = production_env(tmp_path)
    if redaction_key is None:
        del env["BIGMIND_REDACTION_KEY"]
    else:
        env["BIGMIND_REDACTION_KEY"] = env.get(redaction_key, redaction_key)

    result = check_deploy(env)

    assert result.returncode != 0
    assert "events_app.W001" in result.stderr + result.stdout


def test_it_fails_check_deploy_with_debug_on(tmp_path: Path) -> None:
    result = check_deploy(production_env(tmp_path, DJANGO_DEBUG="true"))

    assert result.returncode != 0
    assert "security.W018" in result.stderr + result.stdout


def test_it_keeps_debug_off_and_cookies_secure_when_no_debug_variable_is_set(
    tmp_path: Path,
) -> None:
    env = production_env(tmp_path)
    # Only what a bare production machine must set: nothing about debug, cookies or HTTPS.
    for key in list(env):
        if key.startswith("DJANGO_") and key not in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"):
            del env[key]

    answers = probe(env)

    assert answers["debug"] is False
    assert answers["session_cookie_secure"] is True
    assert answers["csrf_cookie_secure"] is True


@pytest.fixture(scope="module")
def production_answers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return probe(production_env(tmp_path_factory.mktemp("production")))


def test_its_cookies_and_headers_are_secure_in_the_production_environment(
    production_answers: dict,
) -> None:
    login = production_answers["https_login"]

    assert login["status"] == 200
    csrf_cookie = login["cookies"]["csrftoken"]
    assert csrf_cookie["secure"] is True
    assert login["headers"]["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload"
    )
    assert login["headers"]["X-Frame-Options"] == "DENY"
    assert login["headers"]["X-Content-Type-Options"] == "nosniff"
    assert login["headers"]["Referrer-Policy"] == "same-origin"


def test_it_redirects_plain_http_to_https_except_probes_and_metrics(
    production_answers: dict,
) -> None:
    answers = production_answers

    redirect = answers["http_openapi"]
    assert redirect["status"] == 301
    assert redirect["location"] == "https://signals.example.com/v1/openapi.json"
    for path, status in answers["http_probes"].items():
        # Answered (healthy or not, allowed or not), never sent to HTTPS.
        assert status not in (301, 302), path


def test_it_believes_x_forwarded_proto_only_when_told_a_trusted_proxy_sets_it(
    tmp_path: Path, production_answers: dict
) -> None:
    untrusted = production_answers["http_forwarded_openapi"]
    trusted = probe(production_env(tmp_path, DJANGO_TRUST_X_FORWARDED_PROTO="true"))[
        "http_forwarded_openapi"
    ]

    # A client's own X-Forwarded-Proto must not pass for HTTPS.
    assert untrusted["status"] == 301
    assert trusted["status"] == 200
    assert "Strict-Transport-Security" in trusted["headers"]


def test_its_documented_production_environment_holds_only_variables_the_code_reads() -> None:
    read = settings_variables() | gunicorn_variables()

    assert set(documented_production_env()) <= read


def test_every_variable_the_settings_read_is_documented() -> None:
    docs = "\n".join(
        path.read_text()
        for path in (DEPLOYMENT_DOC, ROOT / "docs" / "operations.md", ROOT / "README.md")
    )

    undocumented = sorted(name for name in settings_variables() if f"`{name}" not in docs)

    assert undocumented == []


def settings_variables() -> set[str]:
    # settings.py, and the modules it hands a variable's logic to (given its `env`).
    modules = ("settings.py", "idempotency_settings.py")
    source = "\n".join((ROOT / "bigmind" / name).read_text() for name in modules)
    return set(re.findall(r"\benv(?:\.\w+)?\(\s*\"([A-Z][A-Z0-9_]*)\"", source))


def gunicorn_variables() -> set[str]:
    source = (ROOT / "bigmind" / "gunicorn_conf.py").read_text()
    return set(re.findall(r"(?:os\.environ\.get|_int|_bool)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
