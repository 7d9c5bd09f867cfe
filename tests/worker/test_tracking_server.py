"""A real `mlflow server` stopped mid-job and started again: training goes on, the job succeeds, and the
run's history has every point (sent when the server is back). The server binds 127.0.0.1 only and is
stopped, with its whole process group, at the end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from server.demo import MlflowServer
from worker.run import run_job
from worker.spec import JobSpec
from worker.tracking import PENDING_FILE

MLFLOW_START_S = 120  # a cold `mlflow server` takes ~17 s on a quiet machine; more on a busy one


@pytest.fixture()
def live_mlflow(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")  # stop() and start() keep its port and store
    server.start(MLFLOW_START_S)
    try:
        yield server
    finally:
        server.stop()


class OutageReporter:
    """Stops the server once training passes `at_step`, starts it again `down_s` later (in a thread), and
    notes the steps trained while it was down."""

    def __init__(self, server: MlflowServer, at_step: int, down_s: float):
        self.server, self.at_step, self.down_s = server, at_step, down_s
        self.step = 0
        self.stopped_at: int | None = None
        self.back_at: int | None = None
        self.down_ms: tuple[int, int] = (0, 0)  # wall clock, as MLflow's metric timestamps
        self.thread: threading.Thread | None = None

    def progress(self, job_id, step, total, metrics):
        self.step = step
        if self.thread is None and step >= self.at_step:
            self.thread = threading.Thread(target=self._outage, daemon=True)
            self.thread.start()

    def _outage(self) -> None:
        self.server.stop()
        self.stopped_at, down = self.step, int(time.time() * 1000)
        time.sleep(self.down_s)
        self.server.start(MLFLOW_START_S)
        self.back_at, self.down_ms = self.step, (down, int(time.time() * 1000))

    def should_cancel(self, job_id):
        return False

    def log(self, job_id, line):
        pass


@pytest.mark.slow
def test_a_job_survives_its_mlflow_server_stopping_and_starting_again(tmp_path, live_mlflow, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("LIFTPLACE_MLFLOW_DRAIN_TIMEOUT_S", str(MLFLOW_START_S + 30))
    steps, every = 400, 5
    spec = JobSpec(job_id=1, kind="teacher", output_dir=str(tmp_path / "job"), preset="tiny", teacher_name="tiny",
                   steps=steps, batch_size=8, checkpoint_every=50, fid_samples=20, sample_steps=2, log_every=every,
                   mlflow_tracking_uri=live_mlflow.url, mlflow_experiment="outage")
    reporter = OutageReporter(live_mlflow, at_step=40, down_s=5.0)
    monkeypatch.setattr("worker.run.PROGRESS_INTERVAL_S", 0.0)  # the reporter sees every step
    outcome = run_job(spec, reporter=reporter, device="cpu")
    reporter.thread.join(MLFLOW_START_S + 30)

    assert outcome.status == "succeeded", outcome.reason
    assert reporter.stopped_at is not None and reporter.back_at is not None
    assert reporter.stopped_at < steps  # training went on with the server down
    assert "mlflow_unsent_values" not in outcome.metrics
    client = MlflowClient(tracking_uri=live_mlflow.url)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and "liftplace.history_missing" not in run.data.tags
    history = client.get_metric_history(run.info.run_id, "loss_total")
    assert sorted(m.step for m in history) == list(range(every, steps + 1, every))  # no hole
    during = [m.step for m in history if reporter.down_ms[0] < m.timestamp < reporter.down_ms[1]]
    assert during, (reporter.stopped_at, reporter.back_at)  # points taken while the server was down are there
    assert len(client.get_metric_history(run.info.run_id, "loss_total_max")) == steps // every
    assert run.data.metrics["fid_digits"] == pytest.approx(outcome.fid)
    assert not (Path(spec.output_dir) / PENDING_FILE).exists()
    log = (Path(spec.output_dir) / "job.log").read_text()
    assert "warning" not in log, log
