"""Divergence: a real run whose loss turns inf is stopped at that step and recorded `diverged`.

The jobs run the real worker in this process (ThreadExecutor), tracked in MLflow. One seed of a
study gets a KD weight whose loss overflows float32 at the first step (the fault is put into that
seed's spec by the test's runner; the worker, the training loop and the service are untouched);
a stand-alone job asks for the same weight through the API. Both end `diverged` at step 1 with
nothing after it (no model, no FID), the study cell counts the collapse and averages the other
seeds, and the other jobs run on to success.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest

from liftplace.stats import COLLAPSE_FID_THRESHOLD
from server.executors import LocalReporter, ThreadExecutor, run_in_process
from tests.reliability.faults_kit import (
    JOB_OPTIONS,
    TEACHER,
    JobFiles,
    jobs_of,
    mlflow_runs_of,
    parent_metric,
    save_tiny_teacher,
    service,
    wait_ended,
)
from worker.spec import JobOutcome, JobSpec

DIVERGING_LAMBDA_KD = 1e38  # lambda_kd * L_kd (about 10 at the first step) is inf in float32
TIMEOUT_S = 180


def test_a_diverging_run_is_stopped_recorded_and_counted_as_a_collapse(db_url: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from liftplace.features import ensure_digits_classifier
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store opens at once (see test_worker_death)
    save_tiny_teacher(tmp_path / "teachers")
    ensure_digits_classifier()
    mlflow_uri = (tmp_path / "mlruns").as_uri()

    def runner(spec: JobSpec, reporter: LocalReporter) -> JobOutcome:
        if spec.study_name == "divergence" and spec.seed == 1:  # the injected fault
            spec = dataclasses.replace(spec, lambda_kd=DIVERGING_LAMBDA_KD)
        return run_in_process(spec, reporter)

    with service(tmp_path / "data", database_url=db_url,  # SQLite and PostgreSQL
                 teachers_dir=tmp_path / "teachers", mlflow_uri=mlflow_uri, experiment="divergence",
                 executor=ThreadExecutor(runner, max_workers=2)) as c:
        r = c.post("/api/studies", json={"name": "divergence", "teachers": [TEACHER], "methods": ["outkd"],
                                         "seeds": [0, 1, 2], **JOB_OPTIONS})
        assert r.status_code == 201, r.text
        study = r.json()
        alone = c.post("/api/jobs", json={"teacher": TEACHER, "method": "outkd", "seed": 0,
                                          "lambda_kd": DIVERGING_LAMBDA_KD, **JOB_OPTIONS})
        assert alone.status_code == 201, alone.text
        ids = [j["id"] for j in jobs_of(c, study=study["id"])] + [alone.json()["id"]]
        jobs = wait_ended(c, ids, TIMEOUT_S)

        diverged, healthy = [jobs[1], jobs[3]], [jobs[0], jobs[2]]
        for job in diverged:
            assert job["status"] == "diverged", (job["id"], job["status"], job["reason"])
            assert job["diverged_step"] == 1 and job["reason"] == "diverged at step 1"
            assert job["fid"] is None and job["attempts"] == 1  # stopped, not retried
            files = JobFiles(tmp_path / "data", job["id"])
            assert files.count("diverged at step 1: the loss or its gradient is not finite") == 1
            assert not (files.dir / "model").exists() and files.count("fid_digits =") == 0  # nothing after it
            (run,) = mlflow_runs_of(mlflow_uri, "divergence", job["id"])
            assert run.info.status == "FAILED" and run.data.tags["outcome"] == "diverged"
            assert run.data.tags["diverged_step"] == "1" and "fid_digits" not in run.data.metrics
        # The other jobs kept running: they ended after the divergence, every one succeeded.
        for job in healthy:
            assert job["status"] == "succeeded" and job["fid"] > 0 and job["attempts"] == 1
            assert job["finished_at"] > jobs[1]["finished_at"]

        got = c.get(f"/api/studies/{study['id']}").json()
        assert got["status"] == "ended" and got["cells_complete"] == 1
        cell = c.get(f"/api/studies/{study['id']}/table").json()["cells"][0]
        # A collapse is a diverged run, or an FID above the threshold (a 30-step student may be one).
        high = sum(j["fid"] > COLLAPSE_FID_THRESHOLD for j in (jobs[0], jobs[2]))
        assert cell["complete"] and cell["collapses"] == 1 + high and cell["n"] == 2
        assert cell["status_counts"]["diverged"] == 1 and cell["status_counts"]["succeeded"] == 2
        assert cell["mean"] == pytest.approx(statistics.mean([jobs[0]["fid"], jobs[2]["fid"]]))
        assert [t["status"] for t in cell["tries"]] == ["succeeded", "diverged", "succeeded"]
        assert parent_metric(mlflow_uri, got["mlflow_run_id"], f"collapses/{TEACHER}/outkd") == [1.0 + high]
        assert parent_metric(mlflow_uri, got["mlflow_run_id"], f"n/{TEACHER}/outkd") == [2.0]
