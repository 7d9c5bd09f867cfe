"""Integrity of study aggregation on SQLite and PostgreSQL: a cell is complete or absent, never half-written.

A failure in the middle of writing a cell (an exception while its row is half filled in, the
database refusing the row at flush, a crash while a whole study is recomputed) rolls back the
transaction, outcome included; the dispatcher keeps the outcome and records it on its next
round, which writes the cell whole. Two transactions that end a cell's last two seeds at the
same moment write it once (the study's row lock), and a cell whose seeds all ended without a
row is written when a dispatcher starts.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from server import aggregation
from server.dispatcher import end_job
from server.models import Job, Study, StudyCell
from tests.server.server_testkit import FakeTracking, Harness

METHODS = ["outkd", "lift"]


def _study(h: Harness, seeds: int = 2, methods: list[str] = METHODS) -> int:
    r = h.client.post("/api/studies", json={"name": "integrity", "teachers": ["t-small"], "methods": methods,
                                            "seeds": seeds, "student_ratio": 0.5, "steps": 5})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _cells(h: Harness) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored cell rows, each checked against its jobs: all ended, and the very summary they give."""
    with h.app.state.sessionmaker() as s:
        rows = list(s.scalars(select(StudyCell)))
        out = {}
        for row in rows:
            study = s.get(Study, row.study_id)
            jobs = [j for j in aggregation.study_jobs(s, study) if j.method == row.method]
            assert jobs and all(j.ended for j in jobs), f"cell {row.method} stored while a seed runs"
            data = aggregation.compute_cell(row.teacher, row.method, jobs, aggregation.study_threshold(study))
            got = {"n": row.n, "mean": row.mean, "std": row.std, "collapses": row.collapses, "tries": row.tries,
                   "status_counts": row.status_counts}
            want = {k: getattr(data, k) for k in got}
            assert got == want, f"cell {row.method} half-written: {got} != {want}"
            out[(row.teacher, row.method)] = got
        return out


def _statuses(h: Harness, study_id: int) -> list[str]:
    return [j["status"] for j in h.client.get("/api/jobs", params={"study": study_id}).json()["items"]]


def test_a_crash_in_the_middle_of_a_cell_write_rolls_back_and_the_next_round_completes_it(
        make_harness, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_harness(tracking=FakeTracking()) as h:
        h.runner.hold.set()
        study = _study(h)
        h.tick_until(lambda: _statuses(h, study) == ["running"] * 4, what="4 running")

        # 1. The first cell fails after its row is half filled in (summary set, time stamp not).
        real_utcnow = aggregation.utcnow
        crashes: list[str] = []

        def crashing_utcnow():
            if not crashes:
                crashes.append("cell")
                raise RuntimeError("crash in the middle of a cell write")
            return real_utcnow()

        monkeypatch.setattr(aggregation, "utcnow", crashing_utcnow)
        # 2. The second cell's row is refused by the database at flush.
        refused: list[int] = []

        def refuse_cell_rows(session: Session, _ctx: Any, _instances: Any) -> None:
            if not refused and any(isinstance(o, StudyCell) and o.method == "lift" for o in session.new):
                refused.append(1)
                raise RuntimeError("the database refused the cell row")

        sessions = h.app.state.sessionmaker
        event.listen(sessions, "before_flush", refuse_cell_rows)
        try:
            h.runner.release()
            h.tick_until(lambda: bool(crashes) and bool(refused), what="both injected failures")
            # Each failure undid its whole transaction: the seed that completed the cell is still
            # running in the database (its outcome waits in the dispatcher), and no cell is stored.
            assert sorted(_statuses(h, study)).count("running") >= 1
            assert set(_cells(h)) <= {("t-small", m) for m in METHODS}  # _cells: none half-written
            h.tick_until(lambda: _statuses(h, study) == ["succeeded"] * 4, what="all recorded")
        finally:
            event.remove(sessions, "before_flush", refuse_cell_rows)
        cells = _cells(h)
        assert set(cells) == {("t-small", m) for m in METHODS}
        for (_, method), cell in cells.items():
            fids = [j["fid"] for j in h.client.get("/api/jobs", params={"study": study}).json()["items"]
                    if j["method"] == method]
            assert cell["n"] == 2 and cell["mean"] == pytest.approx(statistics.mean(fids))
        h.tick()
        assert h.tracking is not None and h.tracking.cell_logs[-1]["complete"] is True
        ids = [j["id"] for j in h.client.get("/api/jobs", params={"study": study}).json()["items"]]
        lines = [line for j in ids for line in h.client.get(f"/api/jobs/{j}/logs").json()["lines"]]
        assert sum(line.endswith("[server] succeeded") for line in lines) == 4  # each outcome recorded once


def test_a_crash_while_recomputing_a_study_rolls_every_cell_back(harness: Harness,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    study_id = _study(harness)
    harness.tick_until(lambda: _statuses(harness, study_id) == ["succeeded"] * 4, what="all succeeded")
    before = _cells(harness)
    assert len(before) == 2
    real_update = aggregation.update_cell
    calls = []

    def crash_on_second(session: Session, study: Study, teacher: str, method: str,
                        axes: dict | None = None) -> StudyCell | None:
        calls.append(method)
        if len(calls) == 2:
            raise RuntimeError("crash while recomputing")
        return real_update(session, study, teacher, method, axes)

    monkeypatch.setattr(aggregation, "update_cell", crash_on_second)
    sessions = harness.app.state.sessionmaker
    with pytest.raises(RuntimeError, match="crash while recomputing"):
        with sessions.begin() as s:
            aggregation.recompute_study(s, s.get(Study, study_id))
    assert _cells(harness) == before  # the deletes and the first cell's rewrite were undone
    monkeypatch.setattr(aggregation, "update_cell", real_update)
    for _ in range(2):  # recomputing is idempotent
        with sessions.begin() as s:
            assert len(aggregation.recompute_study(s, s.get(Study, study_id))) == 2
        assert _cells(harness) == before


def test_two_transactions_ending_the_last_seeds_of_a_cell_write_it(harness: Harness) -> None:
    """Without the study's row lock, PostgreSQL (READ COMMITTED) lets each transaction see the other
    seed still queued: both commit, and the cell is never written."""
    study_id = _study(harness, seeds=2, methods=["outkd"])
    sessions = harness.app.state.sessionmaker
    settings = harness.settings
    first_done = threading.Event()
    errors: list[BaseException] = []

    def end(job_id: int, fid: float, hold_s: float) -> None:
        try:
            with sessions.begin() as s:
                job = s.get(Job, job_id)
                assert job is not None
                job.fid, job.fid_metric = fid, "fid_digits"
                end_job(s, settings, job, "succeeded", "")
                if hold_s:
                    first_done.set()
                    time.sleep(hold_s)  # the other transaction runs meanwhile
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    ids = [j["id"] for j in harness.client.get("/api/jobs", params={"study": study_id}).json()["items"]]
    first = threading.Thread(target=end, args=(ids[0], 3.0, 0.5))
    first.start()
    assert first_done.wait(20)
    second = threading.Thread(target=end, args=(ids[1], 5.0, 0.0))
    second.start()
    first.join(30)
    second.join(30)
    assert not errors, errors
    cells = _cells(harness)
    assert cells[("t-small", "outkd")]["n"] == 2 and cells[("t-small", "outkd")]["mean"] == 4.0


def test_a_cell_left_without_its_row_is_written_when_a_dispatcher_starts(make_harness) -> None:
    with make_harness(tracking=FakeTracking()) as h:
        study_id = _study(h)
        h.tick_until(lambda: _statuses(h, study_id) == ["succeeded"] * 4, what="all succeeded")
        before = _cells(h)
        with h.app.state.sessionmaker.begin() as s:  # as left by an older version, or a restored backup
            s.execute(delete(StudyCell).where(StudyCell.method == "lift"))
        assert set(_cells(h)) == {("t-small", "outkd")}
    with make_harness(tracking=FakeTracking()) as h:
        h.tick()  # start-up: recovery, then the missing cell
        assert _cells(h) == before
        assert h.client.get(f"/api/studies/{study_id}").json()["cells_complete"] == 2
