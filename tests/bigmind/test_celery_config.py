"""Celery's configuration under Celery's own setting names (issue #12): a worker started as
`make run` starts it prints no CDeprecationWarning and no "No hostname was supplied"."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.app.defaults import _OLD_SETTING_KEYS, SETTING_KEYS
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from kombu import Connection

from bigmind import celery_config
from bigmind.celery import app

ROOT = Path(__file__).resolve().parents[2]


def test_the_app_has_no_deprecated_setting_and_would_warn_of_none() -> None:
    app.conf.finalize()

    assert not app.conf.deprecated_settings
    assert set(app.conf.changes) & _OLD_SETTING_KEYS == set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert app.conf.maybe_warn_deprecated_settings() is False
    assert caught == []


def test_every_celery_django_setting_reaches_celery_under_its_new_name() -> None:
    names = [name for name in dir(settings) if name.startswith("CELERY_")]
    assert len(names) > 15

    for name in names:
        if name == "CELERY_DB_REUSE_MAX":  # Celery's Django fixup reads this exact name
            assert app.conf.get(name) == settings.CELERY_DB_REUSE_MAX
            continue
        new = name.removeprefix("CELERY_").lower()
        assert new in SETTING_KEYS, name
        assert getattr(celery_config, new) == getattr(settings, name), name
        assert app.conf[new] == getattr(settings, name), name
    # A few that matter, read the way Celery reads them.
    assert app.conf.task_acks_late is True
    assert app.conf.task_serializer == "json"
    assert app.conf.timezone == "UTC"
    assert app.conf.task_routes["events.process_event"] == {"queue": "events.process"}


def test_a_misspelt_celery_setting_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ImproperlyConfigured, match="CELERY_TASK_ACK_LATE is not a Celery"):
        celery_config.celery_settings(SimpleNamespace(CELERY_TASK_ACK_LATE=True))
    assert celery_config.celery_settings(
        SimpleNamespace(CELERY_TASK_ACKS_LATE=True, OTHER=1, CELERY_DB_REUSE_MAX=5)
    ) == {"task_acks_late": True, "CELERY_DB_REUSE_MAX": 5}


@pytest.mark.parametrize("url", ["filesystem://", "filesystem:///"])
def test_the_filesystem_broker_url_names_a_host(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """kombu warns "No hostname was supplied" at every connection of a URL without one."""
    import importlib

    import bigmind.settings as settings_module

    monkeypatch.setenv("CELERY_BROKER_URL", url)
    try:
        reloaded = importlib.reload(settings_module)
        assert reloaded.CELERY_BROKER_URL == "filesystem://localhost/"
    finally:
        monkeypatch.undo()
        importlib.reload(settings_module)
    with caplog.at_level(logging.WARNING, logger="kombu"):
        Connection("filesystem://localhost/").info()
    assert "No hostname" not in caplog.text


def _worker_env(tmp_path: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CELERY_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "CACHE_URL", "PYTHONWARNINGS")
    }
    # What `make run` exports; the embedded defaults in a folder of this test's own.
    env.update(DJANGO_DEBUG="true", LOG_FORMAT="plain", BIGMIND_VAR_DIR=str(tmp_path / "var"))
    return env


def test_a_worker_and_beat_started_as_make_run_starts_them_print_no_warning(
    tmp_path: Path,
) -> None:
    """The worker's command line of scripts/run_local.py (one pool process), on the embedded
    filesystem broker, until it is ready; beat for its first tick."""
    log = tmp_path / "worker.log"
    commands = {
        "worker": [
            *("-m", "celery", "-A", "bigmind", "worker", "-Q", "events.process,default"),
            *("--loglevel", "INFO", "--concurrency", "1", "--without-mingle", "--without-gossip"),
        ],
        "beat": ["-m", "celery", "-A", "bigmind", "beat", "--loglevel", "INFO"],
    }
    outputs: dict[str, str] = {}
    for name, args in commands.items():
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=_worker_env(tmp_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            ready = "celery@" if name == "worker" else "beat: Starting"
            try:
                deadline = time.monotonic() + 60
                while not (ready in log.read_text() and " ready." in log.read_text()) and not (
                    name == "beat" and ready in log.read_text()
                ):
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
                time.sleep(1)  # what it prints right after
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        outputs[name] = log.read_text()

    for name, output in outputs.items():
        assert "Deprecation" not in output, (name, output)
        assert "deprecated" not in output, (name, output)
        assert "celery upgrade settings" not in output, (name, output)
        assert "No hostname was supplied" not in output, (name, output)
    assert "filesystem://:**@localhost//" in outputs["worker"]
