"""The service layer called directly, without HTTP (as the dispatcher and scripts call it), on
SQLite and PostgreSQL: the job services, their errors, and the number of queries a list costs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from server.db import read_session
from server.errors import Conflict, NotFound
from server.schemas import JobCreate, StudyCreate
from server.services import jobs, studies, teachers
from tests.server.server_testkit import Harness, make_local_teacher


@contextmanager
def statements(harness: Harness) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = harness.app.state.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _write(harness: Harness, fn: Callable[[Session], Any]) -> Any:
    with harness.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        result = fn(session)
        session.commit()
        return result


def _read(harness: Harness, fn: Callable[[Session], Any]) -> Any:
    with read_session(harness.app.state.sessionmaker) as session:  # type: ignore[attr-defined]
        return fn(session)


def test_job_services_without_http(harness: Harness) -> None:
    s = harness.settings
    made = _write(harness, lambda db: jobs.create_job(db, s, JobCreate(teacher="t-small", seed=4, method="outkd",
                                                                        student_teacher="t-large")))
    assert (made.status, made.teacher, made.student_teacher, made.seed, made.method) == ("queued", "t-small",
                                                                                         "t-large", 4, "outkd")
    assert _read(harness, lambda db: jobs.read_job(db, s, made.id)) == made
    assert harness.job(made.id) == made.model_dump(mode="json")  # the API answers the same
    with pytest.raises(NotFound, match=r"job 999999 not found"):
        _read(harness, lambda db: jobs.read_job(db, s, 999_999))
    with pytest.raises(NotFound, match=r"study 77 not found"):
        _read(harness, lambda db: jobs.list_jobs(db, s, study=77))
    with pytest.raises(Conflict, match=r"only failed, diverged, cancelled jobs can be retried"):
        _write(harness, lambda db: jobs.retry_job(db, s, made.id))
    cancelled = _write(harness, lambda db: jobs.cancel_job(db, s, made.id))
    assert cancelled.status == "cancelled" and cancelled.reason == "cancelled before it started"
    with pytest.raises(Conflict, match=r"has already ended \(cancelled\)"):
        _write(harness, lambda db: jobs.cancel_job(db, s, made.id))
    again = _write(harness, lambda db: jobs.retry_job(db, s, made.id))
    assert again.status == "queued" and again.attempts == 0
    lines = _read(harness, lambda db: jobs.job_logs(db, made.id)).lines
    assert any("cancelled before it started" in line for line in lines) and "retry requested" in lines[-1]


def test_pages_cover_every_job_once_newest_first(harness: Harness) -> None:
    s = harness.settings
    ids = [harness.submit(seed=i, teacher="t-small" if i % 2 else "t-large")["id"] for i in range(11)]
    _write(harness, lambda db: jobs.cancel_job(db, s, ids[3]))
    for status, expected in ((None, ids[::-1]), ("queued", [i for i in ids[::-1] if i != ids[3]])):
        pages = [_read(harness, lambda db, o=offset, st=status: jobs.list_jobs(db, s, status=st, limit=4, offset=o))
                 for offset in range(0, 12, 4)]
        assert [job.id for page in pages for job in page.items] == expected
        assert {page.total for page in pages} == {len(expected)}
        for job in pages[0].items:  # a row of a page is the job as read alone
            assert job == _read(harness, lambda db, i=job.id: jobs.read_job(db, s, i))


def test_a_list_costs_the_same_queries_whatever_its_length(harness: Harness) -> None:
    """No query per row: a page of jobs, of studies and the teachers are a fixed number of statements."""
    s = harness.settings
    for i in range(3):
        body = StudyCreate(name=f"s{i}", teachers=["t-small", "t-large"], methods=["outkd", "lift"], seeds=2)
        _write(harness, lambda db, b=body: studies.create_study(db, s, b))
    counts = {}
    for limit in (1, 3):
        with statements(harness) as seen:
            page = _read(harness, lambda db, n=limit: jobs.list_jobs(db, s, limit=n))
        assert len(page.items) == limit
        counts["jobs", limit] = len(seen)
        with statements(harness) as seen:
            page = _read(harness, lambda db, n=limit: studies.list_studies(db, s, limit=n))
        assert len(page.items) == limit and page.items[0].jobs == 8
        counts["studies", limit] = len(seen)
    for name in ("t-3", "t-4", None):
        with statements(harness) as seen:
            listed = _read(harness, teachers.list_teachers)
        counts["teachers", len(listed)] = len(seen)
        if name is not None:
            make_local_teacher(harness.settings.teachers_dir, name)
            assert harness.client.post("/api/teachers", json={"source": "local", "name": name}).status_code == 201
    assert counts["jobs", 1] == counts["jobs", 3] <= 3  # BEGIN (SQLite), the count, the page
    assert counts["studies", 1] == counts["studies", 3]
    assert counts["teachers", 2] == counts["teachers", 3] == counts["teachers", 4]
