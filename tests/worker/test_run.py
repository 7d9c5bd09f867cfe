"""run_job end to end on CPU with tiny models: outcomes, resume, MLflow tracking, teacher jobs."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import typing
from pathlib import Path

import pytest
import torch

import worker.run as run_mod
from liftplace.config import DistillConfig, TeacherConfig
from liftplace.environment import run_environment
from liftplace.models import build_unet, count_parameters, load_unet, save_unet
from worker.run import Reporter, run_job, training_config
from worker.spec import LOG_FILE, RUN_ID_FILE, JobSpec
from worker.tracking import ENV_TAG_PREFIX, spec_params, spec_tags

EXPERIMENT = "worker-tests"


class FakeReporter:
    """Records what the job reports; asks to cancel once it has seen progress at `cancel_at`."""

    def __init__(self, cancel_at: int | None = None):
        self.cancel_at = cancel_at
        self.steps: list[int] = []
        self.totals: set[int] = set()
        self.metrics: list[dict[str, float]] = []
        self.lines: list[str] = []
        self.cancel_checks = 0

    def progress(self, job_id, step, total, metrics):
        self.steps.append(step)
        self.totals.add(total)
        self.metrics.append(metrics)

    def should_cancel(self, job_id):
        self.cancel_checks += 1
        return self.cancel_at is not None and bool(self.steps) and self.steps[-1] >= self.cancel_at

    def log(self, job_id, line):
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


class BrokenReporter:
    def progress(self, *a):
        raise RuntimeError("progress store is down")

    def should_cancel(self, *a):
        raise RuntimeError("progress store is down")

    def log(self, *a):
        raise RuntimeError("progress store is down")


@pytest.fixture(scope="module")
def mlflow_store(make_mlflow_store):
    """One SQLite MLflow store (and artifact folder) for the module: creating one costs seconds."""
    uri, client, _ = make_mlflow_store(EXPERIMENT)
    return uri, client


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return save_unet(build_unet("tiny", seed=0), tmp_path_factory.mktemp("teacher") / "tiny")


def _spec(tmp_path: Path, uri: str, **kw) -> JobSpec:
    base = dict(
        kind="distill", output_dir=str(tmp_path / f"job{kw.get('job_id', 0)}"), steps=10, batch_size=16,
        checkpoint_every=3, fid_samples=100, sample_steps=5, teacher_name="tiny", importance="magnitude",
        mlflow_tracking_uri=uri, mlflow_experiment=EXPERIMENT,
    )
    base.update(kw)
    return JobSpec(**base)


def _runs_of_job(client, job_id: int):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.job_id = '{job_id}'")


REPORTER_METHODS = ("progress", "should_cancel", "log")


@pytest.mark.parametrize("module,name", [("server.executors", "LocalReporter"), ("worker.ray_tasks", "StoreReporter")])
def test_real_reporters_follow_the_protocol(module, name):
    """The reporters the server hands to run_job (in process, through Ray) have the protocol's methods,
    with its parameters (names, kinds) and types: isinstance alone checks only that the names exist."""
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls(store=None), Reporter)
    for method in REPORTER_METHODS:
        expected, actual = getattr(Reporter, method), getattr(cls, method)
        params = [(p.name, p.kind) for p in inspect.signature(actual).parameters.values()]
        assert params == [(p.name, p.kind) for p in inspect.signature(expected).parameters.values()], method
        assert typing.get_type_hints(actual) == typing.get_type_hints(expected), method


def test_distill_cancel_then_resume_succeeds_in_one_mlflow_run(tmp_path, mlflow_store, teacher_dir, monkeypatch):
    uri, client = mlflow_store
    monkeypatch.setattr(run_mod, "PROGRESS_INTERVAL_S", 0.0)  # a report per step, so the cancel lands at 5
    parent = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id, run_name="study").info.run_id
    spec = _spec(tmp_path, uri, job_id=101, teacher_path=str(teacher_dir), importance="taylor", study_id=7,
                 study_name="stability", mlflow_parent_run_id=parent, seed=1)

    # 1) cancelled by the reporter after step 5: checkpoint kept, MLflow run KILLED
    rep = FakeReporter(cancel_at=5)
    first = run_job(spec, reporter=rep)
    assert first.status == "cancelled", first.reason
    assert first.steps_done == 5 and "cancelled at step 5 of 10" in first.reason
    assert first.fid is None and first.model_dir is None and first.resumed_from_step is None
    # the first report as the job starts (before loading anything), the second as training starts
    assert rep.steps == [0, 0, 1, 2, 3, 4, 5] and rep.totals == {10}
    assert "loss_total" in rep.metrics[-1] and all(math.isfinite(v) for v in rep.metrics[-1].values())
    assert "checkpoint at step 3" in rep.text() and "ended: cancelled" in rep.text()
    out = Path(spec.output_dir)
    assert (out / "checkpoint" / "last.pt").is_file()
    assert (out / RUN_ID_FILE).read_text().strip() == first.mlflow_run_id
    assert client.get_run(first.mlflow_run_id).info.status == "KILLED"

    # 2) the same job again (a retry): resumes from step 5, succeeds, same MLflow run
    rep2 = FakeReporter()
    second = run_job(dataclasses.replace(spec, attempt=2), reporter=rep2)
    assert second.status == "succeeded", second.reason
    assert second.resumed_from_step == 5 and second.steps_done == 10
    assert "resumed from the checkpoint at step 5" in rep2.text()
    assert second.mlflow_run_id == first.mlflow_run_id
    assert len(_runs_of_job(client, 101)) == 1
    assert second.fid_metric == "fid_digits" and math.isfinite(second.fid) and second.fid > 0
    assert second.metrics["fid_digits"] == second.fid
    assert second.metrics["student_parameters"] == second.parameters < second.metrics["teacher_parameters"]
    assert rep2.steps[:2] == [0, 5] and rep2.steps[-1] == 10  # the job starts, then resumes at 5

    # outputs: the student in diffusers format, a sample grid, the error maps
    assert second.model_dir == str(out / "model")
    student = load_unet(second.model_dir)
    assert count_parameters(student) == second.parameters
    assert (out / "samples.png").is_file() and (out / "error_map.png").is_file() and (out / "outcome.json").is_file()

    # MLflow: status, tags, params, per-step metrics (one point per step across the resume), summary, artifacts
    run = client.get_run(second.mlflow_run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    expected_tags = {"job_id": "101", "liftplace.kind": "distill", "study_id": "7", "study_name": "stability",
                     "teacher": "tiny", "method": "lift+place+featkd", "seed": "1", "student_ratio": "0.9",
                     "attempt": "2", "mlflow.parentRunId": parent, "outcome": "succeeded", "resumed_from_step": "5"}
    assert {k: tags.get(k) for k in expected_tags} == expected_tags
    params = run.data.params
    assert params["method"] == "lift+place+featkd" and params["steps"] == "10" and params["seed"] == "1"
    assert params["student_ratio"] == "0.9" and tags["liftplace.teacher_path"] == str(teacher_dir)
    assert params["teacher"] == "tiny" and not {"teacher_path", "output_dir", "job_id"} & set(params)
    assert params["importance"] == "taylor" and params["fid_samples"] == "100" and "attempt" not in params
    history = client.get_metric_history(run.info.run_id, "loss_total")
    assert sorted(m.step for m in history) == list(range(1, 11))
    for name in ("loss_diff", "loss_kd", "loss_feat", "w", "slope_mean", "grad_norm"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 10, name
    metrics = run.data.metrics
    assert metrics["fid_digits"] == pytest.approx(second.fid)
    assert metrics["student_parameters"] == second.parameters
    assert metrics["teacher_parameters"] == count_parameters(load_unet(teacher_dir))
    assert {"error_t50", "error_t750"} <= set(metrics)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.png", "error_map.png", "model", "job.log"} <= top
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "liftplace.json"} <= model_files


def test_distill_diverges_at_step_one(tmp_path, mlflow_store):
    uri, client = mlflow_store
    bad = build_unet("tiny", seed=0)
    with torch.no_grad():
        bad.conv_out.bias.fill_(float("nan"))
    teacher = save_unet(bad, tmp_path / "nan-teacher")
    rep = FakeReporter()
    outcome = run_job(_spec(tmp_path, uri, job_id=102, teacher_path=str(teacher), steps=5), reporter=rep)
    assert outcome.status == "diverged", outcome.reason
    assert outcome.diverged_step == 1 and outcome.reason == "diverged at step 1"
    assert outcome.fid is None and outcome.model_dir is None and outcome.steps_done == 0
    assert "diverged at step 1" in rep.text()
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["outcome"] == "diverged" and run.data.tags["diverged_step"] == "1"


def test_failures_become_failed_outcomes(tmp_path, mlflow_store):
    uri, client = mlflow_store
    missing = tmp_path / "no-such-teacher"
    rep = FakeReporter()
    outcome = run_job(_spec(tmp_path, uri, job_id=103, teacher_path=str(missing)), reporter=rep)
    assert outcome.status == "failed"
    assert outcome.reason.startswith("FileNotFoundError: ") and str(missing) in outcome.reason
    assert "Traceback" in rep.text() and "ended: failed" in rep.text()
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FAILED" and run.data.tags["reason"] == outcome.reason

    # a reporter that raises changes nothing; neither preset nor base teacher is a readable failure
    outcome = run_job(_spec(tmp_path, uri, job_id=104, kind="teacher"), reporter=BrokenReporter())
    assert outcome.status == "failed" and outcome.reason.startswith("ValueError: teacher job: needs either")

    outcome = run_job(_spec(tmp_path, uri, job_id=105, kind="bogus"))
    assert outcome.status == "failed" and "kind" in outcome.reason and outcome.mlflow_run_id is None

    # a job cancelled before it starts does no work (the teacher is not even looked for)
    cancelled = FakeReporter()
    cancelled.should_cancel = lambda job_id: True
    outcome = run_job(_spec(tmp_path, uri, job_id=106, teacher_path=str(missing)), reporter=cancelled)
    assert outcome.status == "cancelled" and outcome.reason == "cancelled before it started"
    assert outcome.mlflow_run_id is None and _runs_of_job(client, 106) == []


def test_teacher_jobs_preset_and_pruned_retrained(tmp_path, mlflow_store):
    uri, client = mlflow_store
    common = dict(kind="teacher", steps=3, checkpoint_every=2, fid_samples=20, sample_steps=2)
    fresh = run_job(_spec(tmp_path, uri, job_id=201, preset="tiny", teacher_name="", **common))
    assert fresh.status == "succeeded", fresh.reason
    model = load_unet(fresh.model_dir)
    assert fresh.parameters == count_parameters(model) == count_parameters(build_unet("tiny"))
    assert fresh.fid_metric == "fid_digits" and math.isfinite(fresh.fid)
    run = client.get_run(fresh.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["teacher"] == "tiny" and run.data.tags["method"] == "teacher"
    assert len(client.get_metric_history(fresh.mlflow_run_id, "loss_total")) == 3
    # where it computed: the run's tags and the job's log (a seed's numbers depend on the processor)
    env = run_environment("cpu")
    assert {k: run.data.tags[f"{ENV_TAG_PREFIX}{k}"] for k in env} == env == fresh.environment  # and the outcome
    assert {"cpu", "threads", "torch", "device"} <= set(env) and env["torch"] == torch.__version__
    log = (Path(fresh.model_dir).parent / LOG_FILE).read_text()
    assert f"environment: python {env['python']}, torch {env['torch']}," in log and f"cpu {env['cpu']}" in log

    pruned = run_job(_spec(tmp_path, uri, job_id=202, base_teacher_path=fresh.model_dir, prune_ratio=0.5,
                           teacher_name="tiny-half", **common))
    assert pruned.status == "succeeded", pruned.reason
    small = load_unet(pruned.model_dir)
    assert count_parameters(small) == pruned.parameters < fresh.parameters
    assert small(torch.zeros(1, 1, 8, 8), torch.tensor([10])).sample.shape == (1, 1, 8, 8)
    assert (Path(pruned.model_dir).parent / "error_map.png").is_file()
    metrics = client.get_run(pruned.mlflow_run_id).data.metrics
    assert metrics["base_teacher_parameters"] == fresh.parameters
    assert metrics["teacher_parameters"] == pruned.parameters


def test_a_spec_maps_to_its_training_config():
    distill_spec = JobSpec(job_id=1, kind="distill", output_dir="/x", steps=30, lr=1e-3, lr_schedule="cosine",
                           method="outkd", group_size=None, lambda_kd=0.5, checkpoint_every=7, seed=4)
    config = training_config(distill_spec)
    assert config == DistillConfig(steps=30, lr=1e-3, lr_schedule="cosine", method="outkd", group_size=None,
                                   lambda_kd=0.5, checkpoint_every=7, seed=4)
    teacher = training_config(JobSpec(job_id=2, kind="teacher", output_dir="/x", preset="tiny", steps=5, lr=1e-3))
    assert teacher == TeacherConfig(steps=5, lr=1e-3)  # the spec's distillation fields do not apply
    assert training_config(JobSpec(job_id=3, kind="distill", output_dir="/x")) == DistillConfig()  # same defaults
    with pytest.raises(ValueError, match="^lr_schedule: "):
        training_config(JobSpec(job_id=4, kind="teacher", output_dir="/x", lr_schedule="step"))


def test_a_bad_option_fails_the_job_naming_it(tmp_path, mlflow_store, teacher_dir):
    uri, client = mlflow_store
    rep = FakeReporter()
    outcome = run_job(_spec(tmp_path, uri, job_id=107, teacher_path=str(teacher_dir), lr_schedule="step"),
                      reporter=rep)
    assert outcome.status == "failed" and outcome.reason.startswith("ValueError: lr_schedule: expected one of")
    assert outcome.steps_done == 0 and "teacher tiny" not in rep.text()  # refused before any model is loaded
    assert client.get_run(outcome.mlflow_run_id).data.tags["reason"] == outcome.reason


def test_spec_params_and_tags():
    spec = JobSpec(job_id=9, kind="distill", output_dir="/x", teacher_path="/t/digits-l", extra={"note": "a"},
                   mlflow_tracking_uri="http://user:secret@host", attempt=3)
    params = spec_params(spec)
    assert params["extra.note"] == "a" and params["group_size"] == "16" and params["ablation"] == "None"
    assert not {"attempt", "mlflow_tracking_uri", "extra"} & set(params)
    tags = spec_tags(spec)
    assert tags["teacher"] == "digits-l" and tags["attempt"] == "3" and "study_id" not in tags
    assert "mlflow.parentRunId" not in tags


def test_a_student_pruned_from_another_teacher(tmp_path, mlflow_store, teacher_dir):
    """student_teacher_path: the student is pruned from that teacher (the paper's fixed student), with the
    same ratio, importance and seed as from the distilling teacher; naming the distilling teacher itself
    changes nothing."""
    from liftplace.data import load_dataset
    from liftplace.pruning import prune

    uri, client = mlflow_store
    big = load_unet(teacher_dir)
    small_dir = save_unet(prune(big, 0.5, "magnitude", seed=0).model, tmp_path / "tiny-half")
    data = load_dataset("digits", 8)
    from_big = prune(big, 0.9, "magnitude", data=data, seed=3).params_after
    from_small = prune(load_unet(small_dir), 0.9, "magnitude", data=data, seed=3).params_after
    assert from_big != from_small

    common = dict(seed=3, student_ratio=0.9, method="outkd+featkd", teacher_name="tiny-half",
                  teacher_path=str(small_dir))
    fixed = run_job(_spec(tmp_path, uri, job_id=301, student_teacher_path=str(teacher_dir),
                          student_teacher_name="tiny", **common))
    assert fixed.status == "succeeded", fixed.reason
    assert fixed.parameters == from_big
    assert client.get_run(fixed.mlflow_run_id).data.tags["student_teacher"] == "tiny"
    log = (Path(fixed.model_dir).parent / "job.log").read_text()
    assert "student pruned from teacher tiny at 0.9" in log

    own = run_job(_spec(tmp_path, uri, job_id=302, **common))
    same = run_job(_spec(tmp_path, uri, job_id=303, student_teacher_path=str(small_dir), **common))
    assert own.status == same.status == "succeeded"
    assert own.parameters == same.parameters == from_small
    assert own.fid == pytest.approx(same.fid, rel=1e-6)


def test_a_distillation_from_a_shipped_teacher_loads_it_by_reference(tmp_path, mlflow_store):
    """The service hands a shipped teacher as shipped:NAME; the worker loads its own copy (digests checked)."""
    uri, _ = mlflow_store
    name = "stability-digits-s-p70"
    outcome = run_job(_spec(tmp_path, uri, job_id=106, teacher_path=f"shipped:{name}", teacher_name=name,
                            resolution=8, steps=2, fid_samples=0, sample_steps=2))
    assert outcome.status == "succeeded", outcome.reason
    from liftplace.shipped import teacher_meta

    assert outcome.metrics["teacher_parameters"] == teacher_meta(name)["parameters"]
    outcome = run_job(_spec(tmp_path, uri, job_id=107, teacher_path="shipped:nope", steps=2, fid_samples=0))
    assert outcome.status == "failed" and "no shipped teacher 'nope'" in outcome.reason


@pytest.mark.parametrize("storage", ["local", "mlflow"])
def test_an_image_folder_missing_on_this_node_fails_the_job_naming_node_path_and_setting(
        tmp_path, mlflow_store, teacher_dir, storage):
    """Image folders do not travel (docs/deploy.md): a node without the spec's folder fails the job as it starts,
    naming the node, the path and LIFTPLACE_DATASETS_DIR, before any teacher is loaded; the reason is in the run."""
    import socket

    uri, client = mlflow_store
    missing = tmp_path / "datasets" / "faces"
    rep = FakeReporter()
    outcome = run_job(_spec(tmp_path, uri, job_id=401 if storage == "local" else 402, teacher_path=str(teacher_dir),
                            dataset=str(missing), dataset_name="faces64", resolution=8, storage=storage),
                      reporter=rep)
    assert outcome.status == "failed" and outcome.reason.startswith("DatasetNotOnNode: dataset 'faces64': ")
    for part in (str(missing), f"node {socket.gethostname()}", "LIFTPLACE_DATASETS_DIR", str(missing.parent)):
        assert part in outcome.reason, part
    assert outcome.steps_done == 0 and "teacher tiny" not in rep.text()  # refused before any model is loaded
    assert client.get_run(outcome.mlflow_run_id).data.tags["reason"] == outcome.reason


def test_an_image_folder_on_this_node_is_used(tmp_path, mlflow_store):
    """The check lets a folder that is there through: a teacher job trains on a tiny image folder."""
    from PIL import Image

    folder = tmp_path / "datasets" / "squares"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (12, 10), (60 * i, 20, 200 - 40 * i)).save(folder / f"{i}.png")
    uri, _ = mlflow_store
    outcome = run_job(_spec(tmp_path, uri, job_id=403, kind="teacher", preset="tiny", teacher_name="",
                            dataset=str(folder), dataset_name="squares", resolution=8, steps=2, batch_size=4,
                            fid_samples=0, sample_steps=2))
    assert outcome.status == "succeeded", outcome.reason
    assert load_unet(outcome.model_dir).config.in_channels == 3
