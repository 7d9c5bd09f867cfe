"""Fixtures of the web tests: the server tests' databases and harness, one headless Chromium per session.

The endpoint and page tests reuse the server tests' fixtures (every one runs on SQLite and on
PostgreSQL), with the browser UI added to the app. The browser tests drive Debian's chromium
through Playwright (Playwright's own browser downloads are not used); every page is opened in a
context that refuses requests to anything but 127.0.0.1 and the test fails if one was attempted.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import db_url, harness, open_harness, pg_database  # noqa: F401  (fixtures)
from tests.server.server_testkit import Harness
from tests.web.web_testkit import CHROMIUM, CHROMIUM_ARGS, RequestGuard, Shots
from web import install

VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture
def make_harness(db_url: str,  # noqa: F811  (the imported fixture, requested by name)
                 tmp_path: Path) -> Iterator[Callable[..., contextlib.AbstractContextManager[Harness]]]:
    """`with make_harness(**settings) as h:` a started app with its browser UI on this test's database
    (the server tests' harness, which serves the API alone, plus `web.install`)."""
    yield functools.partial(open_harness, db_url, tmp_path, ui=install)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's package) for the whole session."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (scripts/test.sh does, as root) "
                    "or set LIFTPLACE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def guard() -> RequestGuard:
    return RequestGuard()


@pytest.fixture
def page(browser: Any, guard: RequestGuard) -> Iterator[Any]:
    """A fresh browser context and page; afterwards, no request may have left 127.0.0.1."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(15_000)
    guard.attach(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert guard.seen, "the guard saw no request at all"
    assert guard.refused == [], f"requests that would have left 127.0.0.1: {guard.refused}"
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Shots:
    return Shots(tmp_path / "shots", request.node.name.replace("[", "-").replace("]", ""))
