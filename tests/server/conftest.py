"""Fixtures of the server tests: every API test runs on SQLite and on PostgreSQL.

PostgreSQL: a fresh database per test session on 127.0.0.1:5432 (override the admin URL with
LIFTPLACE_TEST_POSTGRES_URL), dropped at the end; each test gets an empty schema in it. When no
server answers, the PostgreSQL cases are skipped with the reason (set LIFTPLACE_TEST_POSTGRES=require
to make that a failure instead, as CI should).

Jobs run in a `ThreadExecutor` with a `FakeRunner` that acts out workers (succeed, fail, diverge,
die, wait to be cancelled) in milliseconds; tests drive the dispatcher round by round with
`Harness.tick_until`, so nothing depends on timing. The real worker runs in the e2e test.
"""

from __future__ import annotations

import contextlib
import functools
import os
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
from tests.server.server_testkit import MLFLOW_UI, FakeRunner, FakeTracking, Harness, make_local_teacher

PG_ADMIN_URL = os.environ.get("LIFTPLACE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- databases -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; its URL."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"liftplace_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("LIFTPLACE_TEST_POSTGRES") == "require":
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
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
