"""No API key is stored in plain text anywhere: keys are made by every real path (the service,
`create_api_key`, the admin, `bootstrap_demo`) and used, refused and revoked; then the whole
database is dumped (pg_dump on PostgreSQL, iterdump on SQLite), the shared cache and broker are
read key by key (Redis) or file by file (the embedded defaults under BIGMIND_VAR_DIR), sessions
are decoded, and the log output is searched. None may hold a full key or any long piece of its
secret part."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.test import Client

from signals_app.management.commands.bootstrap_demo import DEMO_API_KEY
from signals_app.models import ApiKey, Organization
from signals_app.services import api_key_create, api_key_hash, organization_get_or_create
from tests.conftest import KEY_FORM, SEED_REQUEST
from tests.security.conftest import ingest_payload, send

pytestmark = pytest.mark.django_db(transaction=True)

# The visible prefix (`sk_` + 8) is stored on purpose; everything after it is the secret.
VISIBLE = 11
WINDOW = 12  # 72 bits of a 256-bit secret: a piece this long is never stored by chance


def secret_pieces(raw_key: str) -> dict[str, str]:
    """What must never appear, named: the key, its secret part, and every long piece of it."""
    secret = raw_key[VISIBLE:]
    pieces = {"the full key": raw_key, "the secret part": secret}
    for start in range(0, len(secret) - WINDOW + 1):
        pieces[f"secret[{start}:{start + WINDOW}]"] = secret[start : start + WINDOW]
    return pieces


def encodings(text: str) -> Iterator[tuple[str, bytes]]:
    data = text.encode()
    yield "as is", data
    yield "hex", binascii.hexlify(data)  # bytea in a dump
    yield "base64", base64.b64encode(data).rstrip(b"=")
    yield "urlsafe base64", base64.urlsafe_b64encode(data).rstrip(b"=")


def assert_absent(where: str, haystack: bytes, keys: list[str]) -> None:
    assert haystack, f"{where}: nothing to search (the dump did not work)"
    lowered = haystack.lower()
    for raw in keys:
        for what, piece in secret_pieces(raw).items():
            for encoding, needle in encodings(piece):
                # Hex may be printed in either case.
                found = needle.lower() in lowered if encoding == "hex" else needle in haystack
                assert not found, f"{what} of {raw[:VISIBLE]}… ({encoding}) found in {where}"


# --- Where things are kept --------------------------------------------------------------------
def database_dump() -> bytes:
    if connection.vendor == "postgresql":
        db = connection.settings_dict
        env = {**os.environ, "PGPASSWORD": db["PASSWORD"] or ""}
        command = ["pg_dump", "--no-owner", "-h", db["HOST"] or "127.0.0.1"]
        command += ["-p", str(db["PORT"] or 5432), "-U", db["USER"] or "postgres", db["NAME"]]
        return subprocess.run(command, env=env, check=True, capture_output=True).stdout
    connection.ensure_connection()
    return "\n".join(connection.connection.iterdump()).encode()


def redis_dump(url: str) -> bytes:
    import redis

    client = redis.Redis.from_url(url)
    chunks = []
    for name in client.scan_iter(count=1000):
        kind = client.type(name).decode()
        chunks.append(name)
        if kind == "string":
            chunks.append(client.get(name) or b"")
        elif kind == "list":
            chunks.extend(client.lrange(name, 0, -1))
        elif kind == "hash":
            for field, value in client.hgetall(name).items():
                chunks += [field, value]
        elif kind == "set":
            chunks.extend(client.smembers(name))
        elif kind == "zset":
            chunks.extend(member for member, _ in client.zrange(name, 0, -1, withscores=True))
    return b"\n".join(chunks) + b"\n(redis " + url.encode() + b")"


def var_dir_dump() -> bytes:
    """Every file the embedded defaults keep (SQLite cache, filesystem broker, beat schedule)."""
    chunks = [b"(var dir)"]
    for path in sorted(Path(settings.VAR_DIR).rglob("*")):
        if path.is_file() and path.stat().st_size < 200 * 1024 * 1024:
            chunks.append(path.read_bytes())
    return b"\n".join(chunks)


def shared_stores_dump() -> dict[str, bytes]:
    dumps = {"BIGMIND_VAR_DIR files": var_dir_dump()}
    cache = settings.CACHES["default"]
    if "redis" in cache["BACKEND"].lower():
        dumps["the shared cache (Redis)"] = redis_dump(cache["LOCATION"])
    if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        dumps["the broker (Redis)"] = redis_dump(settings.CELERY_BROKER_URL)
    return dumps


def sessions_dump(*clients: Client) -> bytes:
    decoded = [repr(SessionStore().decode(s.session_data)) for s in Session.objects.all()]
    cookies = [repr(dict(client.cookies.items())) for client in clients]
    return "\n".join(["(sessions)", *decoded, *cookies]).encode()


# --- The test ---------------------------------------------------------------------------------
def exercise_every_key_path(admin: Client) -> list[str]:
    """Make keys every way there is, and use, refuse and revoke them."""
    out = StringIO()
    call_command("create_organization", "acme", "--name", "Acme", stdout=out)
    out = StringIO()
    call_command("create_api_key", "--organization", "acme", "--name", "cli", stdout=out)
    from_command = out.getvalue().strip()

    acme = Organization.objects.get(slug="acme")
    response = admin.post(
        "/admin/signals_app/apikey/add/", {"organization": acme.pk, "name": "ui", **KEY_FORM}
    )
    assert response.status_code == 302, response.content[:500]
    # Between the POST and the page it redirects to, the key is in no store in any form.
    pending = sessions_dump(admin)
    response = admin.get(response["Location"])
    assert response.status_code == 200, response.content[:500]
    from_admin = re.search(r'value="(sk_[A-Za-z0-9_\-]+)"', response.content.decode()).group(1)
    assert_absent("sessions and cookies before the key was shown", pending, [from_admin])

    call_command("bootstrap_demo", "--allow-production", stdout=StringIO())
    globex, _ = organization_get_or_create(slug="globex")
    _, from_service = api_key_create(organization=globex, name="service")
    _, revoked_later = api_key_create(organization=acme, name="revoked later")

    keys = [from_command, from_admin, DEMO_API_KEY, from_service, revoked_later]
    for raw in keys:
        assert ApiKey.objects.filter(key_hash=api_key_hash(raw)).exists(), raw[:VISIBLE]

    api = Client()
    accepted = send(
        api,
        "POST",
        "/v1/events",
        key=DEMO_API_KEY,
        body=SEED_REQUEST | {"signal": "visited-documentation-page"},
    )
    assert accepted.status_code == 202, accepted.content
    for raw in keys:
        assert send(api, "GET", "/v1/signals", key=raw).status_code == 200
        # A refusal that is recorded (unknown signal, stored with its body) and one that is not.
        assert (
            send(api, "POST", "/v1/events", key=raw, body=ingest_payload("nope")).status_code == 404
        )
        assert (
            send(
                api, "POST", "/v1/events/batch", key=raw, body={"events": [ingest_payload("nope")]}
            ).status_code
            == 207
        )
    # A key sent wrongly: in the query string, without the scheme, one character off.
    assert (
        send(api, "GET", "/v1/signals", key=None, query={"api_key": from_command}).status_code
        == 401
    )
    assert send(api, "GET", "/v1/signals", key=None, Authorization=from_admin).status_code == 401
    assert send(api, "GET", "/v1/signals", key=from_service[:-1] + "x").status_code == 401

    revoking = ApiKey.objects.get(key_hash=api_key_hash(revoked_later))
    response = admin.post(
        "/admin/signals_app/apikey/",
        {"action": "revoke_keys", "_selected_action": [revoking.pk], "post": "yes"},
    )
    assert response.status_code == 302
    out = StringIO()
    call_command("revoke_api_key", from_command, stdout=out)
    for raw in (revoked_later, from_command):
        assert send(api, "GET", "/v1/signals", key=raw).status_code == 401
    # The admin pages that list and show keys, rendered once each.
    for url in ("/admin/signals_app/apikey/", f"/admin/signals_app/apikey/{revoking.pk}/change/"):
        assert admin.get(url).status_code == 200
    return keys


def test_no_key_is_stored_in_plain_text_in_the_database_cache_broker_or_logs(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    admin = Client()
    admin.force_login(user)

    keys = exercise_every_key_path(admin)

    dump = database_dump()
    assert b"signals_app_apikey" in dump  # the dump is the real thing
    for raw in keys:
        assert api_key_hash(raw).encode() in dump  # ...and holds every key, hashed
    assert_absent(f"the {connection.vendor} database dump", dump, keys)
    for where, content in shared_stores_dump().items():
        assert_absent(where, content, keys)
    assert_absent("sessions and cookies", sessions_dump(admin), keys)

    records = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.__dict__!r}" for r in caplog.records
    )
    assert_absent("log records", f"(logs) {records}".encode(), keys)
    out, err = capfd.readouterr()
    assert_absent("stdout and stderr", f"(output) {out} {err}".encode(), keys)
