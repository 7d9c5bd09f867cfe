"""Migrations on SQLite and PostgreSQL: they build exactly the models' schema, up and down; SQLite's
settings and its writers, queued in the process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from server.db import alembic_config, make_engine, make_sessionmaker, read_session, run_migrations
from server.models import Base


def test_migrations_build_the_models_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        run_migrations(engine)
        run_migrations(engine)  # idempotent: a restart applies nothing twice
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert ctx.get_current_revision() == head
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert {"jobs", "studies", "study_cells", "teachers", "datasets", "job_logs", "alembic_version"} <= tables

        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        run_migrations(engine)
        assert "jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_timestamps_come_back_in_utc(db_url: str) -> None:
    import datetime as dt

    from server.db import make_sessionmaker
    from server.models import Dataset

    engine = make_engine(db_url)
    try:
        run_migrations(engine)
        sessions = make_sessionmaker(engine)
        when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        with sessions.begin() as s:
            s.add(Dataset(name="d", kind="embedded", created_at=when))
        with sessions() as s:
            got = s.query(Dataset).one().created_at
        assert got == when and got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)
    finally:
        engine.dispose()


def test_the_dispatched_status_migrates_up_and_down(db_url: str) -> None:
    """0004 admits "dispatched"; going back to 0003 turns a dispatched job into a running one (what it
    was called before) and refuses the new status again."""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    insert = text("INSERT INTO datasets (name, kind, resolution, description, created_at) "
                  "VALUES ('d', 'embedded', 8, '', CURRENT_TIMESTAMP)")
    job = ("INSERT INTO jobs (kind, status, dataset_id, seed, steps, options, attempts, cancel_requested, log_offset, "
           "metrics, reason, created_at) "
           "VALUES ('teacher', :status, 1, 0, 1, '{}', 1, false, 0, '{}', '', CURRENT_TIMESTAMP)")
    engine = make_engine(db_url)
    cfg = alembic_config()
    try:
        run_migrations(engine)
        with engine.begin() as conn:
            conn.execute(insert)
            conn.execute(text(job), {"status": "dispatched"})
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM jobs")).scalars().all() == ["running"]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(job), {"status": "dispatched"})
        run_migrations(engine)
        with engine.begin() as conn:
            conn.execute(text(job), {"status": "dispatched"})
    finally:
        engine.dispose()


# --- SQLite: one writer at a time in a process, queued on a lock -----------------------------------


def _sqlite_engine(tmp_path: Path, **kwargs: Any) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'writers.db'}", **kwargs)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INTEGER, n INTEGER)")
    return engine


def test_sqlite_is_wal_with_synchronous_normal(tmp_path: Path) -> None:
    engine = _sqlite_engine(tmp_path)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        engine.dispose()


def test_sqlite_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    """Eight threads writing at once all commit, each transaction whole (no 'database is locked')."""
    engine = _sqlite_engine(tmp_path)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for _ in range(25):
                with engine.begin() as conn:  # read, then write: what a submission does
                    count = conn.exec_driver_sql("SELECT count(*) FROM t").scalar()
                    conn.exec_driver_sql("INSERT INTO t (writer, n) VALUES (?, ?)", (k, count))
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT writer, n FROM t ORDER BY id").all()
        assert [n for _, n in rows] == list(range(200))  # each saw every row before its own: none interleaved
        assert sorted({w for w, _ in rows}) == list(range(8))
    finally:
        engine.dispose()


def _quickly(fn: Callable[[], object], what: str) -> None:
    """`fn` must not wait for the writer lock (whose wait would last the 30 s busy timeout)."""
    started = time.perf_counter()
    fn()
    assert time.perf_counter() - started < 5.0, f"{what} waited for the writer lock"


def test_the_writer_lock_is_given_back_and_not_taken_by_readers(tmp_path: Path) -> None:
    # One idle connection at most: it is always the one that wrote last.
    engine = _sqlite_engine(tmp_path, pool_size=1, max_overflow=1)

    def write_on_another_connection() -> None:
        with engine.connect() as _last_used, engine.begin() as conn:  # the last writer's connection is parked
            conn.exec_driver_sql("INSERT INTO t (writer, n) VALUES (0, 0)")

    try:
        with pytest.raises(RuntimeError), engine.begin() as conn:  # a failed transaction rolls back ...
            conn.exec_driver_sql("INSERT INTO t (writer, n) VALUES (1, 1)")
            raise RuntimeError("the request failed")
        _quickly(write_on_another_connection, "a write after a rolled-back one")  # ... and gives the lock back
        def two_transactions() -> None:  # on one connection, before it returns to the pool
            with engine.connect() as conn:
                for n in range(2):
                    with conn.begin():
                        conn.exec_driver_sql("INSERT INTO t (writer, n) VALUES (2, ?)", (n,))

        _quickly(two_transactions, "a connection's second transaction")
        _quickly(write_on_another_connection, "a write after a connection's two transactions")
        with engine.connect() as holder:  # a write transaction left open holds the lock ...
            holder.begin()
            holder.exec_driver_sql("INSERT INTO t (writer, n) VALUES (3, 0)")
            sessions = make_sessionmaker(engine)

            def read() -> None:
                with read_session(sessions) as s:
                    assert s.execute(text("SELECT count(*) FROM t WHERE writer = 3")).scalar() == 0

            _quickly(read, "a read-only session")  # ... and a reader does not wait for it
            holder.rollback()
    finally:
        engine.dispose()


def test_jobs_stored_before_featkd_layers_keep_the_hook_set_they_trained_with(db_url: str) -> None:
    """0005 writes featkd_layers "blocks" (the only hook set before the option) into the options of FeatKD jobs
    stored earlier, so a retry resumes their checkpoints; other jobs and newer options stay as they are."""
    import json

    from sqlalchemy import text

    engine = make_engine(db_url)
    cfg = alembic_config()
    job = ("INSERT INTO jobs (kind, status, dataset_id, seed, steps, options, attempts, cancel_requested, log_offset, "
           "metrics, reason, created_at, method) "
           "VALUES ('distill', 'failed', 1, 0, 1, :options, 1, false, 0, '{}', '', CURRENT_TIMESTAMP, :method)")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            conn.execute(text("INSERT INTO datasets (name, kind, resolution, description, created_at) "
                              "VALUES ('d', 'embedded', 8, '', CURRENT_TIMESTAMP)"))
            for method, options in [("outkd+featkd", {"lr": 0.01}), ("lift+place+featkd", {}),
                                    ("lift+place+featkd", {"featkd_layers": "sublayers"}), ("outkd", {})]:
                conn.execute(text(job), {"options": json.dumps(options), "method": method})
        run_migrations(engine)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT options FROM jobs ORDER BY id")).scalars().all()
        got = [json.loads(o) if isinstance(o, str) else o for o in rows]
        assert got == [{"lr": 0.01, "featkd_layers": "blocks"}, {"featkd_layers": "blocks"},
                       {"featkd_layers": "sublayers"}, {}]
    finally:
        engine.dispose()


def test_teacher_model_versions_migrate_up_and_down(db_url: str) -> None:
    """0009 adds each teacher's MLflow model version and digest (cluster mode); going back to 0008 drops them,
    keeps the teachers, and keeps 0008's revision triggers on the table (no batch copy of it on SQLite)."""
    revision = text("SELECT SUM(value) FROM revisions")
    engine = make_engine(db_url)
    cfg = alembic_config()
    try:
        run_migrations(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO teachers (name, source, status, folder, reason, created_at, model_version, "
                              "model_digest) VALUES ('t', 'local', 'ready', 't', '', CURRENT_TIMESTAMP, '3', :d)"),
                         {"d": "ab" * 32})
        with engine.connect() as conn:
            row = conn.execute(text("SELECT model_version, model_digest FROM teachers")).one()
        assert tuple(row) == ("3", "ab" * 32)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0008")
        columns = {c["name"] for c in inspect(engine).get_columns("teachers")}
        assert "model_version" not in columns and "model_digest" not in columns
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM teachers")).scalars().all() == ["t"]
            before = conn.execute(revision).scalar()
        with engine.begin() as conn:
            conn.execute(text("UPDATE teachers SET reason = 'x'"))
        with engine.connect() as conn:
            assert conn.execute(revision).scalar() > before  # the triggers survived the downgrade
        run_migrations(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name, model_version FROM teachers")).one() == ("t", None)
    finally:
        engine.dispose()
