"""Tracking metadata and errors: which errors are retried, a job that cannot reach MLflow at start, the
parameters of teacher and distillation runs, and the dashboard's compare links checked with MLflow's search."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from server.services.dashboards import cell_links, compare_url
from server.tracking import STUDY_RUN_KIND, Tracking, runs_filter
from worker.retry import is_transient, mlflow_retry, safe_uri
from worker.run import run_job
from worker.spec import JobSpec
from worker.tracking import KIND_TAG, JobTracker, run_name, spec_params, spec_tags

UI = "http://mlflow.test"


def _mlflow_error(code_name: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    return MlflowException("x", error_code=getattr(databricks_pb2, code_name))


def test_only_transient_errors_are_retried():
    from mlflow.exceptions import RestException

    assert is_transient(requests.ConnectionError("refused")) and is_transient(requests.Timeout())
    assert is_transient(_mlflow_error("TEMPORARILY_UNAVAILABLE"))  # e.g. a locked SQLite store
    assert is_transient(RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}))  # 429
    assert is_transient(RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}))  # 500
    try:  # how MLflow's REST client reports a refused connection: its own error, the cause in the chain
        try:
            raise requests.ConnectionError("refused")
        except Exception as e:
            raise RuntimeError(f"API request failed with exception {e}") from None
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    for permanent in (_mlflow_error("INVALID_PARAMETER_VALUE"), _mlflow_error("RESOURCE_DOES_NOT_EXIST"),
                      RestException({"error_code": "PERMISSION_DENIED", "message": "no"}), ValueError("bad")):
        assert not is_transient(permanent), permanent


def test_mlflow_retry_retries_transient_errors_with_backoff_and_raises_others_at_once():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise requests.ConnectionError("refused")
        return "ok"

    assert mlflow_retry(flaky) == "ok" and len(calls) == 3
    assert calls[1] - calls[0] >= 0.2 and calls[2] - calls[1] >= 0.45  # exponential backoff: 0.25 s, 0.5 s (+ jitter)

    def refused():
        calls.append(0)
        raise _mlflow_error("INVALID_PARAMETER_VALUE")

    calls.clear()
    with pytest.raises(Exception, match="x"):
        mlflow_retry(refused)
    assert calls == [0]

    def down():
        calls.append(1)
        raise requests.ConnectionError("refused")

    calls.clear()
    start = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        mlflow_retry(down, retry_for_s=0.6)  # gives up after about that long, with the last error
    assert len(calls) >= 2 and time.monotonic() - start < 5


def test_a_tracking_uri_loses_its_credentials_in_messages():
    assert safe_uri("http://user:secret@mlflow:5000/x") == "http://mlflow:5000/x"
    assert safe_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert safe_uri("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_job_that_cannot_reach_mlflow_at_start_fails_naming_the_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFTPLACE_MLFLOW_START_TIMEOUT_S", "1.5")
    port = _free_port()  # nothing listens there
    spec = JobSpec(job_id=1, kind="teacher", output_dir=str(tmp_path / "job"), preset="tiny", steps=2,
                   mlflow_tracking_uri=f"http://user:secret@127.0.0.1:{port}")
    start = time.monotonic()
    outcome = run_job(spec)
    assert outcome.status == "failed" and outcome.steps_done == 0
    assert outcome.reason.startswith(f"TrackingUnavailable: cannot reach MLflow at http://127.0.0.1:{port} ")
    assert "secret" not in outcome.reason
    assert time.monotonic() - start < 30  # MLflow's own HTTP retries (minutes by default) are off


# --- run metadata --------------------------------------------------------------------------------------------


def _distill(job_id: int, teacher: str, method: str, seed: int, root: Path, **kw) -> JobSpec:
    return JobSpec(job_id=job_id, kind="distill", output_dir=str(root / str(job_id)), teacher_name=teacher,
                   teacher_path=f"/teachers/{teacher}", method=method, seed=seed, steps=500_000,
                   dataset="/datasets/celeba", dataset_name="celeba64", **kw)


def _teacher(job_id: int, name: str, root: Path, **kw) -> JobSpec:
    return JobSpec(job_id=job_id, kind="teacher", output_dir=str(root / str(job_id)), teacher_name=name, steps=1000,
                   dataset="/datasets/celeba", dataset_name="celeba64", **kw)


def test_teacher_runs_carry_teacher_parameters_and_distillation_runs_theirs(tmp_path):
    distill = spec_params(_distill(3, "big", "outkd", 2, tmp_path, student_teacher_name="huge",
                                   student_teacher_path="/t/huge", lambda_kd=0.5))
    assert distill["dataset"] == "celeba64" and distill["teacher"] == "big" and distill["student_teacher"] == "huge"
    assert distill["method"] == "outkd" and distill["student_ratio"] == "0.9" and distill["group_size"] == "16"
    assert distill["lambda_kd"] == "0.5" and "lambda_feat" not in distill  # unset: the method's own
    assert distill["log_every"] == "250"  # 500K steps / 2000 points
    assert not any("/" in v for v in distill.values())  # names, never paths
    assert not {"job_id", "kind", "output_dir", "teacher_path", "student_teacher_path", "dataset_name",
                "study_id", "study_name", "attempt", "preset", "prune_ratio"} & set(distill)

    fresh = spec_params(_teacher(4, "small", tmp_path, preset="tiny"))
    pruned = spec_params(_teacher(5, "half", tmp_path, base_teacher_path="/m/big", prune_ratio=0.5,
                                  importance="magnitude", log_every=7))
    distill_only = {"method", "student_ratio", "group_size", "coarse", "curriculum", "ablation", "reduction",
                    "lambda_kd", "lambda_feat", "student_teacher"}
    for params in (fresh, pruned):
        assert not distill_only & set(params) and params["dataset"] == "celeba64"
        assert not any("/" in v for v in params.values())
    assert fresh["preset"] == "tiny" and fresh["teacher"] == "small" and "importance" not in fresh
    assert (pruned["prune_ratio"], pruned["importance"], pruned["log_every"]) == ("0.5", "magnitude", "7")

    tags = spec_tags(_teacher(5, "half", tmp_path, base_teacher_path="/m/big", prune_ratio=0.5))
    assert tags[KIND_TAG] == "teacher" and tags["liftplace.base_teacher_path"] == "/m/big"
    assert tags["liftplace.dataset_path"] == "/datasets/celeba" and tags["mlflow.source.name"] == "liftplace teacher"
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "JOB" and "kind" not in tags
    assert run_name(_distill(3, "big", "outkd", 2, tmp_path)) == "big · outkd · r0.9 · seed 2 · job 3"


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, Tracking(uri, UI, experiment="links")


def _open(spec: JobSpec, uri: str) -> str:
    spec.mlflow_tracking_uri, spec.mlflow_experiment = uri, "links"
    tracker = JobTracker.start(spec)
    tracker.end("FINISHED")
    return tracker.run_id


def test_compare_links_select_exactly_a_cells_runs_and_the_compare_view_plots_teacher_method_seed(tmp_path, store):
    """Two teachers x two methods x five seeds of study 3, among runs that must not be mixed in: the
    teacher-training runs of the same teachers, a run of another study, the study's parent run."""
    uri, tracking = store
    exp, parent = tracking.start_study_run(3, "capacity", {"teachers": "big,small"})
    teachers, methods, seeds = ("big", "small"), ("outkd", "lift+place+featkd"), range(5)
    jobs, cells, job_id = [], [], 100
    for teacher in teachers:
        for method in methods:
            tries = []
            for seed in seeds:
                job_id += 1
                spec = _distill(job_id, teacher, method, seed, tmp_path, study_id=3, study_name="capacity",
                                mlflow_parent_run_id=parent)
                jobs.append(SimpleNamespace(id=job_id, mlflow_run_id=_open(spec, uri), mlflow_experiment_id=exp))
                tries.append({"job_id": job_id, "seed": seed})
            cells.append(SimpleNamespace(teacher=teacher, method=method, tries=tries, key=f"{teacher}/{method}",
                                         axes={}))
    for i, teacher in enumerate(teachers):
        _open(_teacher(200 + i, teacher, tmp_path, preset="tiny", study_id=3), uri)
    _open(_distill(300, "big", "outkd", 0, tmp_path, study_id=4, study_name="other"), uri)

    client = tracking.client
    links = cell_links(UI, 3, SimpleNamespace(cells=cells), jobs)
    assert len(links) == 4
    for link, cell in zip(links, cells, strict=True):
        found = client.search_runs([exp], filter_string=link.search_filter)
        run_ids = {j.mlflow_run_id for j in jobs if j.id in {t["job_id"] for t in cell.tries}}
        assert link.runs == 5 and {r.info.run_id for r in found} == run_ids
        assert link.url == compare_url(UI, [exp], [j.mlflow_run_id for j in jobs if j.mlflow_run_id in run_ids])
        assert {r.data.tags["seed"] for r in found} == {str(s) for s in seeds}

    study_runs = client.search_runs([exp], filter_string=runs_filter(3), max_results=1000)
    assert {r.info.run_id for r in study_runs} == {j.mlflow_run_id for j in jobs}  # no teacher, parent or other run
    parent_run = client.get_run(parent)
    assert parent_run.data.tags[KIND_TAG] == STUDY_RUN_KIND and parent_run.data.tags["mlflow.user"]
    assert client.get_run(jobs[0].mlflow_run_id).data.tags[KIND_TAG] == "distill"

    # MLflow's compare view plots the first three parameters that differ, sorted (ParallelCoordinatesPlotPanel)
    params = [client.get_run(j.mlflow_run_id).data.params for j in jobs]
    keys = set().union(*params)
    differing = sorted(k for k in keys if len({p.get(k) for p in params}) > 1)
    assert differing[:3] == ["method", "seed", "teacher"] and len(differing) == 3
    run = client.get_run(jobs[0].mlflow_run_id)
    assert run.info.run_name == "big · outkd · r0.9 · seed 0 · job 101"
    assert run.data.tags["mlflow.source.name"] == "liftplace distill"


def test_a_study_parent_run_carries_its_axes_and_its_cells_their_values(store):
    uri, tracking = store
    axes = {"lr": [0.01, 0.001], "coarse": ["l1", "l2"]}
    _, run_id = tracking.start_study_run(4, "sweep", {"teachers": "big"}, axes)
    run = tracking.client.get_run(run_id)
    assert json.loads(run.data.params["axes"]) == axes and run.data.params["teachers"] == "big"
    assert run.data.params["axis.lr"] == "0.01,0.001" and run.data.params["axis.coarse"] == "l1,l2"
    assert run.data.tags["axes"] == "lr,coarse" and run.data.tags["study_id"] == "4"
    tracking.log_cells(run_id, [{"teacher": "big", "method": "lift", "axes": {"lr": 0.001, "coarse": "l2"},
                                 "mean": 3.0, "std": 1.0, "collapses": 0, "n": 3}], tables={}, complete=True)
    assert tracking.client.get_run(run_id).data.metrics["fid_mean/big/lift/lr:0.001/coarse:l2"] == 3.0
    _, plain = tracking.start_study_run(5, "plain", {"teachers": "big"})  # no axes: no axis params or tag
    data = tracking.client.get_run(plain).data
    assert "axes" not in data.params and "axes" not in data.tags
