"""Cluster mode (JobSpec.storage "mlflow"): a job's checkpoint and outcome travel through its MLflow run, so an
attempt on another node (another, empty output_dir) resumes from the checkpoint, logs into the same run, and a
finished job is not run again; MLflow away fails the job naming it. MLflow is a local SQLite store with its
artifacts under the test's folder (no server); the jobs train the `tiny` preset for a few steps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import pytest

import worker.run as run_mod
from worker.run import run_job
from worker.run_store import (
    CHECKPOINT_ARTIFACT_DIR,
    MANIFEST_NAME,
    OUTCOME_ARTIFACT,
    CheckpointUploader,
    RunStoreUnavailable,
    fetch_checkpoint,
)
from worker.spec import RUN_ID_FILE, JobSpec

EXPERIMENT = "run-store-tests"


class Reporter:
    """Records lines and the run the job reports; asks to cancel once progress reached `cancel_at`."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.cancel_at = cancel_at
        self.steps: list[int] = []
        self.lines: list[str] = []
        self.runs: list[str] = []

    def progress(self, job_id, step, total, metrics):
        self.steps.append(step)

    def should_cancel(self, job_id):
        return self.cancel_at is not None and bool(self.steps) and self.steps[-1] >= self.cancel_at

    def log(self, job_id, line):
        self.lines.append(line)

    def run_opened(self, job_id, run_id):
        self.runs.append(run_id)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def store(make_mlflow_store):
    uri, client, _ = make_mlflow_store(EXPERIMENT)
    return uri, client


def _spec(out: Path, uri: str, **kw) -> JobSpec:
    base = dict(job_id=1, kind="teacher", preset="tiny", output_dir=str(out), steps=6, batch_size=8,
                checkpoint_every=2, fid_samples=0, sample_steps=2, storage="mlflow", mlflow_tracking_uri=uri,
                mlflow_experiment=EXPERIMENT)
    base.update(kw)
    return JobSpec(**base)


def _runs_of_job(client, job_id: int):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.job_id = '{job_id}'")


def _download_text(client, run_id: str, path: str, tmp: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp))).read_text()


def test_a_retry_on_another_node_resumes_from_the_runs_checkpoint_in_the_same_run(tmp_path, store, monkeypatch):
    uri, client = store
    monkeypatch.setattr(run_mod, "PROGRESS_INTERVAL_S", 0.0)  # a report per step: the cancel lands at step 4
    first_spec = _spec(tmp_path / "node-a", uri, job_id=11)

    # Node A: checkpoints at steps 2 and 4, cancelled at 4; every checkpoint goes to the run.
    rep = Reporter(cancel_at=4)
    first = run_job(first_spec, reporter=rep)
    assert first.status == "cancelled" and first.steps_done == 4, first.reason
    assert rep.runs == [first.mlflow_run_id]  # the run id reaches the reporter (the server) as the job starts
    run_id = first.mlflow_run_id
    manifest = json.loads(_download_text(client, run_id, f"{CHECKPOINT_ARTIFACT_DIR}/{MANIFEST_NAME}", tmp_path))
    assert manifest["step"] == 4 and manifest["file"] == "last.pt"
    local = Path(first_spec.output_dir) / "checkpoint" / "last.pt"
    uploaded = Path(client.download_artifacts(run_id, f"{CHECKPOINT_ARTIFACT_DIR}/last.pt", str(tmp_path)))
    assert manifest["sha256"] == hashlib.sha256(uploaded.read_bytes()).hexdigest()
    assert uploaded.read_bytes() == local.read_bytes()
    assert "checkpoint(s) uploaded to the MLflow run, the last of step 4" in rep.text()
    assert not (Path(first_spec.output_dir) / ".checkpoint-upload").exists()  # snapshots removed once uploaded

    # Node B: an empty output folder, the run id from the spec (the server recorded it).
    second_spec = dataclasses.replace(first_spec, output_dir=str(tmp_path / "node-b"), attempt=2,
                                      mlflow_run_id=run_id)
    rep2 = Reporter()
    second = run_job(second_spec, reporter=rep2)
    assert second.status == "succeeded", second.reason
    assert second.resumed_from_step == 4 and second.steps_done == 6
    assert "checkpoint of step 4 downloaded from MLflow run" in rep2.text()
    assert "resumed from the checkpoint at step 4 of 6" in rep2.text() and "from scratch" not in rep2.text()
    assert second.mlflow_run_id == run_id and "(reopened)" in rep2.text()
    assert (Path(second_spec.output_dir) / RUN_ID_FILE).read_text().strip() == run_id
    assert len(_runs_of_job(client, 11)) == 1
    # one history across both nodes: every step once, none logged twice
    history = client.get_metric_history(run_id, "loss_total")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    assert json.loads(_download_text(client, run_id, OUTCOME_ARTIFACT, tmp_path))["status"] == "succeeded"
    assert client.get_run(run_id).info.status == "FINISHED"

    # Node C: the run holds a succeeded outcome; the job is not run again.
    third_spec = dataclasses.replace(first_spec, output_dir=str(tmp_path / "node-c"), attempt=3,
                                     mlflow_run_id=run_id)
    rep3 = Reporter()
    third = run_job(third_spec, reporter=rep3)
    assert third.status == "succeeded" and third.steps_done == 6 and third.mlflow_run_id == run_id
    assert third.model_dir == second.model_dir
    assert "already succeeded in an earlier attempt" in rep3.text() and "training" not in rep3.text()
    assert not (Path(third_spec.output_dir) / "checkpoint").exists()
    assert len(_runs_of_job(client, 11)) == 1


def test_local_mode_uploads_nothing_and_ignores_a_run_id(tmp_path, store):
    """storage "local" (embedded mode): no checkpoint and no outcome in the run, as before."""
    uri, client = store
    out = _spec(tmp_path / "job", uri, job_id=12, storage="local", steps=2)
    done = run_job(out)
    assert done.status == "succeeded", done.reason
    top = {a.path for a in client.list_artifacts(done.mlflow_run_id)}
    assert CHECKPOINT_ARTIFACT_DIR not in top and OUTCOME_ARTIFACT not in top


@pytest.mark.parametrize("run_id", [None, "0123456789abcdef"])
def test_mlflow_unreachable_fails_the_job_naming_mlflow(tmp_path, monkeypatch, run_id):
    monkeypatch.setenv("LIFTPLACE_MLFLOW_START_TIMEOUT_S", "1")
    spec = _spec(tmp_path / "job", "http://127.0.0.1:9", job_id=13, mlflow_run_id=run_id, attempt=2)
    done = run_job(spec)
    assert done.status == "failed"
    assert "MLflow" in done.reason and "http://127.0.0.1:9" in done.reason, done.reason
    assert done.steps_done == 0 and not (Path(spec.output_dir) / "checkpoint").exists()


def _run_with_checkpoint(client, step: int, data: bytes, sha256: str | None = None) -> str:
    """A run whose checkpoint/ holds `data` as last.pt and a manifest (with `sha256`, default the data's)."""
    import tempfile

    exp = client.get_experiment_by_name(EXPERIMENT)
    run_id = client.create_run(exp.experiment_id, tags={"job_id": "99"}).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "last.pt").write_bytes(data)
        manifest = {"step": step, "sha256": sha256 or hashlib.sha256(data).hexdigest(), "file": "last.pt",
                    "journal": {"step": step, "pending": [], "window": None}}
        (Path(tmp) / MANIFEST_NAME).write_text(json.dumps(manifest))
        client.log_artifacts(run_id, tmp, CHECKPOINT_ARTIFACT_DIR)
    return run_id


def test_fetch_checkpoint_checks_the_sha256_and_never_leaves_a_bad_file(tmp_path, store):
    uri, client = store
    dest = tmp_path / "checkpoint" / "last.pt"
    good = _run_with_checkpoint(client, 8, b"weights")
    dest.parent.mkdir()
    dest.write_bytes(b"local, step 8")
    # the local checkpoint is as new as the run's: kept (a node that ran the latest attempt itself)
    assert fetch_checkpoint(client, good, dest, tracking_uri=uri, newer_than=8) is None
    assert dest.read_bytes() == b"local, step 8"
    # an older local one (this node ran an earlier attempt, another node a later one): replaced
    assert fetch_checkpoint(client, good, dest, tracking_uri=uri, newer_than=6) == (
        8, {"step": 8, "pending": [], "window": None})
    assert dest.read_bytes() == b"weights"

    dest2 = tmp_path / "other" / "last.pt"
    bad = _run_with_checkpoint(client, 8, b"weights", sha256="0" * 64)
    with pytest.raises(RunStoreUnavailable, match="sha256"):
        fetch_checkpoint(client, bad, dest2, tracking_uri=uri)
    assert list(dest2.parent.iterdir()) == []  # no file, no temporary folder left

    empty = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id).info.run_id
    assert fetch_checkpoint(client, empty, tmp_path / "none" / "last.pt", tracking_uri=uri) is None


class FlakyClient:
    """An MLflow client whose artifact uploads fail (no connection) while `down` is set."""

    def __init__(self, client) -> None:
        self.client = client
        self.down = threading.Event()
        self.failures = 0

    def log_artifact(self, *args):
        if self.down.is_set():
            self.failures += 1
            raise ConnectionError("MLflow is down")
        return self.client.log_artifact(*args)


def test_uploads_retry_while_mlflow_is_away_and_the_newest_checkpoint_wins(tmp_path, store):
    _uri, client = store
    run_id = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id).info.run_id
    flaky = FlakyClient(client)
    flaky.down.set()
    ckpt = tmp_path / "checkpoint" / "last.pt"
    ckpt.parent.mkdir()
    uploader = CheckpointUploader(flaky, run_id, tmp_path)
    ckpt.write_bytes(b"step 2")
    uploader.submit(2, ckpt, None)
    tmp = ckpt.with_name("last.pt.tmp")
    tmp.write_bytes(b"step 4")
    tmp.replace(ckpt)  # as the training writes its checkpoints
    uploader.submit(4, ckpt, None)
    threading.Timer(0.6, flaky.down.clear).start()  # MLflow comes back
    uploader.close(timeout_s=10.0)
    assert flaky.failures >= 1 and uploader.errors == []
    assert [step for step, _ in uploader.uploads] == [4]
    got = Path(client.download_artifacts(run_id, f"{CHECKPOINT_ARTIFACT_DIR}/last.pt", str(tmp_path / "dl")))
    assert got.read_bytes() == b"step 4"
    assert json.loads(_download_text(client, run_id, f"{CHECKPOINT_ARTIFACT_DIR}/{MANIFEST_NAME}",
                                     tmp_path / "dl2"))["step"] == 4


def test_an_upload_that_never_gets_through_is_reported_not_raised(tmp_path, store):
    _uri, client = store
    run_id = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id).info.run_id
    flaky = FlakyClient(client)
    flaky.down.set()
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"x")
    uploader = CheckpointUploader(flaky, run_id, tmp_path / "out")
    uploader.submit(3, ckpt, None)
    uploader.close(timeout_s=0.5)
    assert uploader.uploads == [] and any("step 3" in e for e in uploader.errors), uploader.errors
