"""The job's MLflow run travels with the job: the server records the run a worker reports as soon as it opens it,
and in cluster mode (LIFTPLACE_STORAGE=mlflow) hands it to every later attempt in the spec (with storage
"mlflow", so the worker keeps its checkpoint and outcome in that run); embedded mode's specs are as before."""

from __future__ import annotations

from typing import Any

from server.executors import WorkerLost
from tests.server.server_testkit import FakeRunner
from worker.spec import JobSpec


class RunReportingRunner(FakeRunner):
    """A FakeRunner whose worker reports its MLflow run as it starts (attempt n: `run-<job>`, as a worker that
    reopened it), holds until released, and dies on its first attempt."""

    def __call__(self, spec: JobSpec, reporter: Any) -> dict[str, Any]:
        reporter.run_opened(spec.job_id, spec.mlflow_run_id or f"run-{spec.job_id}")
        return super().__call__(spec, reporter)


def _lost_first(spec: JobSpec) -> dict[str, Any]:
    if spec.attempt == 1:
        raise WorkerLost("node lost")
    return {"status": "succeeded", "fid": 1.0, "mlflow_run_id": spec.mlflow_run_id}


def test_a_retry_gets_the_run_the_first_attempt_opened_in_cluster_mode(make_harness) -> None:
    runner = RunReportingRunner()
    runner.plan = _lost_first
    runner.hold.set()
    with make_harness(runner=runner, storage="mlflow") as h:
        h.tick()  # registers the local teachers
        job = h.submit(teacher="t-small")
        # Recorded while the first attempt runs, before any outcome.
        h.tick_until(lambda: h.job(job["id"])["mlflow_run_id"] == f"run-{job['id']}", what="the run id")
        runner.release()
        done = h.wait_status(job["id"], "succeeded", "failed")
        assert done["status"] == "succeeded", done["reason"]
        first, second = runner.specs_of(job["id"])
        assert (first.storage, first.mlflow_run_id) == ("mlflow", None)
        assert (second.storage, second.mlflow_run_id, second.attempt) == ("mlflow", f"run-{job['id']}", 2)
        assert done["mlflow_run_id"] == f"run-{job['id']}"


def test_embedded_mode_records_the_run_but_specs_carry_none(make_harness) -> None:
    runner = RunReportingRunner()
    runner.plan = _lost_first
    runner.hold.set()
    with make_harness(runner=runner) as h:
        job = h.submit(teacher="t-small")
        h.tick_until(lambda: h.job(job["id"])["mlflow_run_id"] == f"run-{job['id']}", what="the run id")
        runner.release()
        h.wait_status(job["id"], "succeeded", "failed")
        specs = runner.specs_of(job["id"])
        assert len(specs) == 2
        assert all((s.storage, s.mlflow_run_id) == ("local", None) for s in specs)
