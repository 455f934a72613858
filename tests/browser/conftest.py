"""Headless Debian Chromium driven by Playwright against the admin on pytest-django's live server.

Skipped when /usr/bin/chromium or the `playwright` package is missing, so `make test` passes on a
machine without a browser; with BIGMIND_REQUIRE_BROWSER=1 (CI) that is a failure instead.
Playwright's own browser download is never used: it cannot work on these machines.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("BIGMIND_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USERNAME = "browser-admin"
PASSWORD = "browser-pw-123456"  # only ever in the throwaway test database
TIMEOUT_MS = 15_000


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    browser_items = [item for item in items if here in Path(str(item.path)).parents]
    reason = _missing()
    if reason is None or os.environ.get("BIGMIND_REQUIRE_BROWSER") == "1":
        return  # under BIGMIND_REQUIRE_BROWSER=1 the `browser` fixture fails with the reason
    for item in browser_items:
        item.add_marker(pytest.mark.skip(reason=f"browser tests: {reason}"))


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    directory = Path(os.environ.get("BIGMIND_SCREENSHOT_DIR", "var/test-screenshots"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def _async_unsafe_allowed() -> Iterator[None]:
    # Playwright's sync API runs an event loop in this thread, so Django takes every ORM call in
    # the test (and the transactional flush after it) for one made from async code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _wait_for_live_server_requests(timeout: float = 5.0) -> None:
    # The live server serves each browser connection in its own thread, which keeps a database
    # connection (CONN_MAX_AGE) until the browser closes the keep-alive socket. Wait for those
    # threads, or PostgreSQL refuses to drop the test database "being accessed by other users".
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if "process_request_thread" in thread.name:
            thread.join(max(0.0, deadline - time.monotonic()))


@pytest.fixture(scope="session")
def browser(_async_unsafe_allowed: None, live_server: Any) -> Iterator[Any]:
    # Depends on live_server so that it is closed first, while the server is still up.
    reason = _missing()
    if reason is not None:
        pytest.fail(f"BIGMIND_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
    _wait_for_live_server_requests()


@pytest.fixture
def admin_user(transactional_db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser(USERNAME, "browser@example.com", PASSWORD)


@pytest.fixture
def page(browser: Any, live_server: Any, admin_user: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) on the live server; the admin user exists."""
    context = browser.new_context(
        base_url=live_server.url,
        viewport={"width": 1280, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "response",
        lambda r: (
            # A 304 (Chromium revalidating a file changed minutes ago) is not missing.
            problems.append(f"{r.status} {r.url}")
            if "/static/" in r.url and r.status >= 400
            else None
        ),
    )
    page.bigmind_problems = problems  # type: ignore[attr-defined]
    yield page
    context.close()
    assert not problems, f"JavaScript errors or missing static files: {problems}"


@pytest.fixture
def shoot(page: Any, screenshot_dir: Path, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """`shoot("signal-added")` saves a full-page PNG named after the test and the step."""
    counter = iter(range(1, 100))

    def take(step: str) -> Path:
        path = screenshot_dir / f"{request.node.name}-{next(counter):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.is_file() and path.stat().st_size > 0, path
        return path

    return take


# The log-in form is walked, and the log-in and index pages shot, once a session (by whichever
# test logs in first); later tests get their session cookie from Django's test client, which
# saves a page load and a form post a test.
_FORM_WALKED: set[str] = set()


@pytest.fixture
def log_in(page: Any, shoot: Callable[[str], Path], live_server: Any) -> Callable[[], None]:
    def go() -> None:
        if _FORM_WALKED:
            from django.conf import settings
            from django.contrib.auth import get_user_model
            from django.test import Client

            client = Client()
            client.force_login(get_user_model().objects.get(username=USERNAME))
            session = client.cookies[settings.SESSION_COOKIE_NAME].value
            page.context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
            )
            page.goto("/admin/")
            return
        page.goto("/admin/login/")
        shoot("login")
        page.locator("input[name=username]").fill(USERNAME)
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("form", has=page.locator("input[name=password]")).locator(
            "[type=submit]"
        ).click()
        page.wait_for_url(lambda url: "/admin/login/" not in url)
        shoot("admin-index")
        _FORM_WALKED.add("done")

    return go
