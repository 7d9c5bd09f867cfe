"""Engine, sessions and migrations.

No module-level engine: `create_app` builds one from its settings and keeps it on
``app.state``; the routes open their sessions from its session factory (`server.api.read` /
`write`), the dispatcher opens its own from the same factory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Execution option of a connection that only reads: on SQLite its transaction is a plain (deferred)
# BEGIN, which in WAL mode never waits for a writer and makes no other transaction wait.
READ_ONLY = "liftplace_read_only"


BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for the write lock before failing


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets a busy timeout, WAL, enforced foreign keys and one writer at a
    time per process (see `_sqlite_engine`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _sqlite_engine(url: str, database: str | None, **kwargs: Any) -> Engine:
    """SQLite in WAL mode with PRAGMA synchronous=NORMAL, WAL's usual setting: the WAL is synced to
    disk at checkpoints, not at every commit. A commit survives a crash of the server and the
    database is never corrupted, but a power loss or an OS crash may undo the last commits. (FULL,
    SQLite's default, costs one fsync per submitted job: 8 ms each on the benchmark's VM disk,
    which capped submissions at about 120/s. A lab that needs every commit on disk uses PostgreSQL.)"""
    on_disk = bool(database) and database != ":memory:"
    if on_disk:
        Path(str(database)).parent.mkdir(parents=True, exist_ok=True)
    # The API's worker threads and the dispatcher thread share the engine; a writer waits
    # for the lock (timeout) rather than failing at once.
    kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": BUSY_TIMEOUT_S})
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if on_disk:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    writer = _WriterLock(engine) if on_disk else None

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front (waiting up to the busy timeout). A deferred
        # transaction that reads, then writes after another connection committed, fails at once
        # with "database is locked" (SQLITE_BUSY_SNAPSHOT) instead of waiting. A read-only one
        # (READ_ONLY) never writes, so it takes no lock: readers then neither queue behind writers
        # nor behind each other (SQLite's busy wait is unfair: under load some waited seconds).
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        if writer is not None:
            writer.acquire(conn)
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _WriterLock:
    """One SQLite write transaction at a time in this process, queued on a lock instead of SQLite's busy wait.

    SQLite's busy handler polls with sleeps growing to 100 ms, so with a few concurrent writers
    most of a writer's wait was sleep after the lock had been freed (a p99 of hundreds of ms).
    Here the writers of this process wait on a Python lock, taken before BEGIN IMMEDIATE and
    given back when the connection returns to the pool (after its COMMIT or ROLLBACK). A writer
    of another process still meets SQLite's busy wait. After the busy timeout without the lock,
    a writer goes on to BEGIN IMMEDIATE and SQLite's own timeout decides, as before.
    """

    KEY = "liftplace_holds_writer_lock"

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        event.listen(engine, "checkin", self._release)
        event.listen(engine, "close", self._release)  # a connection closed instead of returned

    def acquire(self, conn: Any) -> None:
        if conn.info.get(self.KEY):  # a connection's next transaction before it returned to the pool
            return
        if self._lock.acquire(timeout=BUSY_TIMEOUT_S):
            conn.info[self.KEY] = True

    def _release(self, _dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(self.KEY, False):
            self._lock.release()


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


@contextmanager
def read_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transactions only read (READ_ONLY: on SQLite, a deferred BEGIN that takes no lock)."""
    with sessions() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session
