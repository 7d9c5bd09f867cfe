"""Migrations on SQLite and PostgreSQL: they build exactly the models' schema, up and down."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from server.db import alembic_config, make_engine, run_migrations
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
