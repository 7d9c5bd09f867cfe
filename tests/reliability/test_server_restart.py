"""Server restart on SQLite and PostgreSQL: queued and running jobs are none lost, none run twice, none stuck.

The first app is stopped (its lifespan ends) while it holds a job in its FID, a job just past its
first checkpoint, a job handed to the executor but not started, and a job still queued in the
database. Its executor stops the running jobs (one checkpoints and stops; the one in its FID
finishes, but nobody records it any more) and drops the one not started. A second app on the same
database and data folder requeues what the first left running, resumes the interrupted job from
its checkpoint, returns the finished job's outcome without running it again, and runs the rest.
The jobs run the real worker in this process (ThreadExecutor), with MLflow.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from liftplace.stats import COLLAPSE_FID_THRESHOLD
from server.executors import LocalReporter, ThreadExecutor, run_in_process
from server.models import Job
from tests.reliability.faults_kit import (
    JOB_OPTIONS,
    TEACHER,
    JobFiles,
    assert_ran_once,
    jobs_of,
    parent_metric,
    save_tiny_teacher,
    service,
    wait_ended,
    wait_for,
)
from worker.spec import JobOutcome, JobSpec

TIMEOUT_S = 180


class Holds:
    """Holds jobs of the first app at chosen moments until its executor asks them to stop.

    {seed: moment}: "fid" (at the start of the FID) or "checkpoint" (right after the first
    checkpoint is written). In-process jobs run in threads: a thread-local says whose job it is.
    """

    def __init__(self, moments: dict[int, str]) -> None:
        self.moments = moments
        self.held = {seed: threading.Event() for seed in moments}
        self._local = threading.local()

    def runner(self, spec: JobSpec, reporter: LocalReporter) -> JobOutcome:
        self._local.job = (spec, reporter)
        try:
            return run_in_process(spec, reporter)
        finally:
            self._local.job = None

    def _hold(self, moment: str) -> None:
        job = getattr(self._local, "job", None)
        if job is None or job[0].attempt != 1 or self.moments.get(job[0].seed) != moment:
            return
        spec, reporter = job
        if self.held[spec.seed].is_set():
            return
        self.held[spec.seed].set()
        wait_for(lambda: reporter.should_cancel(spec.job_id), TIMEOUT_S, "the first app to stop")

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import liftplace.fid
        import liftplace.training

        compute_fid, save_atomic = liftplace.fid.compute_fid, liftplace.training._save_atomic

        def fid(*args: Any, **kwargs: Any) -> Any:
            self._hold("fid")
            return compute_fid(*args, **kwargs)

        def checkpoint(obj: dict, path: Path) -> None:
            save_atomic(obj, path)
            self._hold("checkpoint")

        monkeypatch.setattr(liftplace.fid, "compute_fid", fid)
        monkeypatch.setattr(liftplace.training, "_save_atomic", checkpoint)


def test_a_restart_loses_no_job_runs_none_twice_and_leaves_none_stuck(db_url: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from liftplace.features import ensure_digits_classifier

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store opens at once (see test_worker_death)
    save_tiny_teacher(tmp_path / "teachers")
    ensure_digits_classifier()
    mlflow_uri, experiment = (tmp_path / "mlruns").as_uri(), "restart"
    holds = Holds({0: "fid", 1: "checkpoint"})
    holds.patch(monkeypatch)

    def app(executor: ThreadExecutor):
        # Three jobs in the executor at most: two run (two threads), the third waits for a thread.
        return service(tmp_path / "data", database_url=db_url, teachers_dir=tmp_path / "teachers",
                       mlflow_uri=mlflow_uri, experiment=experiment, executor=executor, max_in_flight=3)

    with app(ThreadExecutor(holds.runner, max_workers=2)) as c:
        r = c.post("/api/studies", json={"name": "restart", "teachers": [TEACHER], "methods": ["outkd"],
                                         "seeds": [0, 1, 2, 3], **JOB_OPTIONS})
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        ids = [j["id"] for j in jobs_of(c, study=study_id)]
        files = [JobFiles(tmp_path / "data", i) for i in ids]
        assert all(event.wait(TIMEOUT_S) for event in holds.held.values())
        # Two run; the third waits in the executor for a thread: handed over ("dispatched"), not running.
        expected = ["running", "running", "dispatched", "queued"]
        deadline = time.monotonic() + TIMEOUT_S  # "running" is recorded at the dispatcher's next round
        while [j["status"] for j in jobs_of(c, study=study_id)] != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [j["status"] for j in jobs_of(c, study=study_id)] == expected
    # The first app is gone. What it left in the database: two jobs running, one dispatched, one queued.
    engine = create_engine(db_url)
    with engine.connect() as conn:
        left = dict(conn.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())
    engine.dispose()
    assert [left[i] for i in ids] == expected
    assert files[0].count(f"job {ids[0]} ended: succeeded") == 1  # finished while the app stopped, unrecorded
    stopped_at = files[1].checkpoint_step()
    assert stopped_at is not None and stopped_at >= 10
    assert files[2].lines() == []  # never started

    with app(ThreadExecutor(run_in_process, max_workers=2)) as c:
        jobs = wait_ended(c, ids, TIMEOUT_S)
        assert c.get("/api/jobs", params={"status": "running"}).json()["total"] == 0
        assert [j["attempts"] for j in jobs] == [2, 2, 2, 1]
        for job, f in zip(jobs, files, strict=True):
            assert_ran_once(c, job, f, mlflow_uri, experiment)
            lines = c.get(f"/api/jobs/{job['id']}/logs", params={"limit": 10_000}).json()["lines"]
            requeued = sum("the server restarted while this job ran; requeued" in line for line in lines)
            assert requeued == (1 if job["attempts"] == 2 else 0)
        assert files[0].count("already succeeded in an earlier attempt") == 1  # not sampled and scored again
        assert jobs[1]["resumed_from_step"] == stopped_at
        assert jobs[2]["resumed_from_step"] is None and jobs[3]["resumed_from_step"] is None
        study = c.get(f"/api/studies/{study_id}").json()
        assert study["status"] == "ended" and study["cells_complete"] == 1
        cell = c.get(f"/api/studies/{study_id}/table").json()["cells"][0]
        assert cell["n"] == 4 and cell["collapses"] == sum(t["fid"] > COLLAPSE_FID_THRESHOLD for t in cell["tries"])
        assert parent_metric(mlflow_uri, study["mlflow_run_id"], f"fid_mean/{TEACHER}/outkd") == [
            pytest.approx(cell["mean"])]
