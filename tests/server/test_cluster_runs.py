"""The job's MLflow run travels with the job: the server records the run a worker reports as soon as it opens it,
and in cluster mode (LIFTPLACE_STORAGE=mlflow) hands it to every later attempt in the spec (with storage
"mlflow", so the worker keeps its checkpoint and outcome in that run); embedded mode's specs are as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.executors import WorkerLost
from server.services import run_files
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


class OtherHostRunner(FakeRunner):
    """A worker on another host: it logs to a real MLflow run (a metric history with per-window extremes, the
    FID, samples.png) and leaves nothing in the API host's job folder."""

    def __init__(self, tracking_uri: str, scratch: Path) -> None:
        super().__init__()
        self.tracking_uri, self.scratch = tracking_uri, scratch

    def __call__(self, spec: JobSpec, reporter: Any) -> dict[str, Any]:
        from mlflow import MlflowClient

        self.specs.append(spec)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name("other-host") or client.get_experiment(
            client.create_experiment("other-host"))
        run_id = client.create_run(experiment.experiment_id).info.run_id
        reporter.run_opened(spec.job_id, run_id)
        for step in (10, 20, 30):
            client.log_metric(run_id, "loss_total", 1.0 / step, step=step)
            client.log_metric(run_id, "loss_total_min", 0.5 / step, step=step)
            client.log_metric(run_id, "loss_total_max", 2.0 / step, step=step)
        client.log_metric(run_id, "fid_digits", 12.5, step=30)
        png = self.scratch / str(spec.job_id) / "samples.png"
        png.parent.mkdir(parents=True)
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
        client.log_artifact(run_id, str(png))
        return {"job_id": spec.job_id, "status": "succeeded", "fid": 12.5, "fid_metric": "fid_digits",
                "steps_done": spec.steps, "mlflow_run_id": run_id}


def _no_mlflow(*args: Any) -> Any:
    raise AssertionError("MLflow was asked again")


def test_the_dashboard_reads_a_job_that_ran_on_another_host_from_its_run(make_harness, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Cluster mode: no job folder on the API host; curves and files come from the job's MLflow run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = OtherHostRunner(uri, tmp_path / "other-host")
    with make_harness(runner=runner, storage="mlflow", mlflow_tracking_uri=uri) as h:
        h.tick()  # registers the local teachers
        job = h.wait_status(h.submit(teacher="t-small", steps=30)["id"], "succeeded", "failed")
        assert job["status"] == "succeeded", job["reason"]
        assert not (h.app.state.settings.jobs_dir / str(job["id"])).exists()  # nothing on the API host
        metrics = h.client.get(f"/api/jobs/{job['id']}/metrics").json()
        assert metrics["steps"] == [10, 20, 30] and metrics["total_points"] == 3
        assert metrics["series"]["loss_total"] == pytest.approx([0.1, 0.05, 1 / 30])
        assert metrics["series"]["fid_digits"] == [None, None, 12.5]
        assert "loss_total_min" not in metrics["series"] and "loss_total_max" not in metrics["series"]
        # An ended job's history is read from MLflow once, then from the API host's copy.
        cached = h.app.state.settings.data_dir / "remote" / str(job["id"]) / job["mlflow_run_id"] / "attempt-1"
        assert (cached / "metrics.json").is_file()
        monkeypatch.setattr(run_files, "_read_history", _no_mlflow)
        assert h.client.get(f"/api/jobs/{job['id']}/metrics").json() == metrics
        for _ in range(2):  # downloaded once, then served from the API host's copy
            r = h.client.get(f"/api/jobs/{job['id']}/files/samples.png")
            assert r.status_code == 200 and r.content == (runner.scratch / str(job["id"]) / "samples.png").read_bytes()
        assert h.client.get(f"/api/jobs/{job['id']}/files/error_map.png").status_code == 404  # not in the run


def test_embedded_mode_never_asks_mlflow_for_a_job_folder(make_harness) -> None:
    with make_harness() as h:
        job = h.wait_status(h.submit(teacher="t-small")["id"], "succeeded")
        assert h.client.get(f"/api/jobs/{job['id']}/metrics").json()["steps"] == []
        assert h.client.get(f"/api/jobs/{job['id']}/files/samples.png").status_code == 404
