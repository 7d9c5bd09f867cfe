"""Pages of jobs cached by database revision, on SQLite and PostgreSQL: a write from another connection
(a worker, another API replica, the CLI) shows in the next page; a hit costs one query; ETags; the
cache's bounds; migration 0007's triggers up and down."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from sqlalchemy import Connection, Engine, event, inspect, text

from server.db import READ_ONLY, alembic_config, make_engine, run_migrations
from server.page_cache import Encoded, PageCache
from tests.server.server_testkit import Harness

NEW_JOB = text(
    "INSERT INTO jobs (kind, status, teacher_id, dataset_id, seed, steps, options, attempts, cancel_requested, "
    "log_offset, metrics, reason, created_at) "
    "SELECT 'distill', 'queued', t.id, d.id, 99, 10, '{}', 0, false, 0, '{}', '', CURRENT_TIMESTAMP "
    "FROM teachers t, datasets d WHERE t.name = 't-small' AND d.name = 'digits'")


@contextmanager
def other_process(harness: Harness) -> Iterator[Connection]:
    """A transaction on a connection of its own engine (as another process would write), committed at the end."""
    engine = make_engine(str(harness.settings.database_url))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _page(harness: Harness, query: str = "") -> dict[str, Any]:
    r = harness.client.get("/api/jobs" + query)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_cached_page_shows_every_write_of_another_connection(harness: Harness) -> None:
    ids = [harness.submit(seed=i)["id"] for i in range(3)]
    first = _page(harness)
    with statements(harness.app.state.engine) as seen:  # type: ignore[attr-defined]
        assert _page(harness) == first
    assert [s for s in seen if s != "BEGIN"] == [seen[-1]] and "revisions" in seen[-1]  # a hit: the revision only

    with other_process(harness) as conn:  # a worker's progress report
        conn.execute(text("UPDATE jobs SET status = 'running', progress_step = 5, progress_total = 10 WHERE id = :i"),
                     {"i": ids[0]})
    job = {j["id"]: j for j in _page(harness)["items"]}[ids[0]]
    assert (job["status"], job["progress"]["step"], job["progress"]["fraction"]) == ("running", 5, 0.5)

    with other_process(harness) as conn:
        conn.execute(NEW_JOB)
    page = _page(harness)
    assert page["total"] == 4 and page["items"][0]["seed"] == 99
    new_id = page["items"][0]["id"]

    with other_process(harness) as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :i"), {"i": new_id})
    page = _page(harness)
    assert page["total"] == 3 and new_id not in [j["id"] for j in page["items"]]

    with other_process(harness) as conn:  # a teacher back in training: the queued jobs wait for it
        conn.execute(text("UPDATE teachers SET status = 'training' WHERE name = 't-small'"))
    assert {j["waiting_for"] for j in _page(harness, "?status=queued")["items"]} == {
        "teacher 't-small' is still training"}
    with other_process(harness) as conn:
        conn.execute(text("UPDATE datasets SET name = 'digits-renamed' WHERE name = 'digits'"))
    assert {j["dataset"] for j in _page(harness)["items"]} == {"digits-renamed"}


def test_the_service_answers_the_same_from_cache_and_fresh(harness: Harness) -> None:
    """The bytes served equal the page the API schema describes (a fresh build), filters and offsets apart."""
    for i in range(5):
        harness.submit(seed=i)
    for query in ("?limit=2", "?limit=2&offset=2", "?status=queued&kind=distill", "?limit=2"):
        fresh = harness.client.get("/api/jobs" + query).json()
        assert harness.client.get("/api/jobs" + query).json() == fresh
        assert fresh["items"] and all(j["max_attempts"] == harness.settings.max_attempts for j in fresh["items"])
    assert _page(harness, "?limit=2")["limit"] == 2 and _page(harness, "?limit=3")["limit"] == 3


def test_an_etag_answers_304_until_the_page_changes(harness: Harness) -> None:
    job = harness.submit()
    r = harness.client.get("/api/jobs")
    etag = r.headers["etag"]
    assert r.headers["cache-control"] == "private, no-cache"
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = harness.client.get("/api/jobs", headers={"If-None-Match": header})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    assert harness.client.get("/api/jobs", headers={"If-None-Match": '"other"'}).status_code == 200
    assert harness.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    changed = harness.client.get("/api/jobs", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["items"][0]["status"] == "cancelled"


def test_the_cache_is_bounded_and_keeps_only_the_newest_revision() -> None:
    cache = PageCache(max_entries=3, max_bytes=100)
    pages = {k: Encoded.of(bytes([k]) * 10) for k in range(5)}
    for k in range(4):
        cache.put(7, k, pages[k])
    assert len(cache) == 3 and cache.get(7, 0) is None  # least recently used out first
    assert cache.get(7, 1) == pages[1]
    cache.put(7, 4, pages[4])
    assert cache.get(7, 1) == pages[1] and cache.get(7, 2) is None  # 1 was used since: 2 went
    cache.put(7, "big", Encoded.of(b"x" * 75))  # 3 entries, but 105 bytes: the least recently used (3) goes
    assert cache.get(7, 3) is None and all(cache.get(7, k) is not None for k in (4, 1, "big"))
    cache.put(7, "more", Encoded.of(b"y" * 20))  # 115 bytes: 4 then 1 go
    assert len(cache) == 2 and cache.get(7, 4) is None and cache.get(7, 1) is None
    cache.put(7, "huge", Encoded.of(b"x" * 101))  # larger than the whole cache: not kept
    assert cache.get(7, "huge") is None
    cache.put(8, 0, pages[0])  # a newer revision: the older entries can never be asked for again
    assert len(cache) == 1 and cache.get(7, "big") is None and cache.get(8, 0) == pages[0]
    cache.put(7, 1, pages[1])  # a read that raced a write stores an older revision: dropped
    assert len(cache) == 1 and cache.get(7, 1) is None


def _revision(engine: Engine) -> int:
    """The revision as another reader sees it (a read-only transaction: on SQLite it takes no write lock)."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        return int(conn.execute(text("SELECT sum(value) FROM revisions")).scalar_one())


def test_the_revision_triggers_migrate_up_and_down(db_url: str) -> None:
    """0007: every write to jobs, teachers, datasets or studies bumps the revision (on PostgreSQL once per
    transaction, at its commit); going back to 0007 drops the counter and its triggers, and writes still work."""
    engine = make_engine(db_url)
    cfg = alembic_config()
    postgres = engine.dialect.name == "postgresql"
    try:
        run_migrations(engine)
        before = _revision(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO datasets (name, kind, resolution, description, created_at) "
                              "VALUES ('digits', 'embedded', 8, '', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO teachers (name, source, status, reason, created_at) "
                              "VALUES ('t-small', 'local', 'ready', '', CURRENT_TIMESTAMP)"))
            for _ in range(3):
                conn.execute(NEW_JOB)
            # not committed yet: other connections still read the old revision
            assert _revision(engine) == before
        after_insert = _revision(engine)
        assert after_insert == before + (1 if postgres else 5)
        for statement in ("UPDATE jobs SET status = 'running'", "DELETE FROM jobs WHERE seed = 99 AND id = "
                          "(SELECT min(id) FROM jobs)", "UPDATE teachers SET reason = 'x'",
                          "UPDATE datasets SET description = 'x'",
                          "INSERT INTO studies (name, teachers, methods, seeds, student_ratio, dataset_id, options, "
                          "axes, created_at) SELECT 's', '[]', '[]', '[]', 0.5, id, '{}', '{}', CURRENT_TIMESTAMP "
                          "FROM datasets"):
            revision = _revision(engine)
            with engine.begin() as conn:
                conn.execute(text(statement))
            assert _revision(engine) > revision, statement
        revision = _revision(engine)
        with engine.begin() as conn:  # a table a page does not read
            conn.execute(text("INSERT INTO job_logs (job_id, line, created_at) "
                              "SELECT min(id), 'a line', CURRENT_TIMESTAMP FROM jobs"))
        assert _revision(engine) == revision

        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0007")
        assert "revisions" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(NEW_JOB)
            conn.execute(text("UPDATE teachers SET reason = 'y'"))
        run_migrations(engine)
        assert _revision(engine) == 0
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'queued'"))
        assert _revision(engine) == (1 if postgres else 3)
    finally:
        engine.dispose()


def test_every_table_a_page_reads_bumps_the_revision() -> None:
    """A page reads its jobs joined to teachers and the dataset (`_ROWS`) and checks its study: 0007's triggers
    cover each of those tables (a join to a table without them would go stale in the cache)."""
    from sqlalchemy.sql.util import find_tables

    from server.services.jobs import _ROWS

    revision = importlib.import_module("server.migrations.versions.0008_list_revision")
    read = {getattr(t, "original", t).name for t in find_tables(_ROWS, include_aliases=True)
            if hasattr(getattr(t, "original", t), "name")}
    assert read == {"jobs", "teachers", "datasets"}
    assert read | {"studies"} <= set(revision.TABLES)
