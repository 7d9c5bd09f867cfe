"""Engine, sessions and migrations.

No module-level engine: `create_app` builds one from its settings and keeps it on
``app.state``; request handlers get a session through the `get_session` dependency, the
dispatcher opens its own sessions from the same factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from fastapi import Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Execution option of a connection that only reads: on SQLite its transaction is a plain (deferred)
# BEGIN, which in WAL mode never waits for a writer and makes no other transaction wait.
READ_ONLY = "liftplace_read_only"
READ_METHODS = ("GET", "HEAD")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets a busy timeout, WAL and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # The API's worker threads and the dispatcher thread share the engine; a writer waits
        # for the lock (timeout) rather than failing at once.
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if database and database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front (waiting up to the busy timeout). A deferred
            # transaction that reads, then writes after another connection committed, fails at once
            # with "database is locked" (SQLITE_BUSY_SNAPSHOT) instead of waiting. A read-only one
            # (READ_ONLY) never writes, so it takes no lock: readers then neither queue behind writers
            # nor behind each other (SQLite's busy wait is unfair: under load some waited seconds).
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after commit (responses are built after it).
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """A programmatic Alembic config pointing at server/migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    return cfg


def run_migrations(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to `revision` (at start-up: every migration not yet applied)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request, from the app's own session factory.

    A GET's session is read-only (READ_ONLY): a GET handler never writes.
    """
    with request.app.state.sessionmaker() as session:
        if request.method in READ_METHODS:
            session.connection(execution_options={READ_ONLY: True})
        yield session
