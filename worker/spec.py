"""The job spec: the only thing the server hands to a worker, and the outcome it gets back.

The server resolves every registered name (teacher, dataset) to a location the worker can
read before it builds a spec: a path, or in cluster mode for a teacher an MLflow model version
(`models:/<name>/<version>` and its digest); the worker never looks anything up in the
server's database.
Both sides import this module; it depends on nothing but the standard library and liftplace's
torch-free `defaults` and `methods`, which hold every default of a job (one definition each).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from liftplace import defaults
from liftplace.methods import FEATKD_LAYERS, PAPER_METHOD

# Files a job writes into its output folder; the server reads some of them for its dashboards.
SAMPLES_FILE = "samples.png"
ERROR_MAP_FILE = "error_map.png"
LOG_FILE = "job.log"
METRICS_FILE = "metrics.jsonl"
OUTCOME_FILE = "outcome.json"
RUN_ID_FILE = "mlflow_run_id"  # the job's MLflow run, so a retry logs to the same run
RUN_KEY_FILE = "mlflow_run_key"
LOGGED_STEP_FILE = "mlflow_logged_step"

JobKind = Literal["distill", "teacher"]
Outcome = Literal["succeeded", "failed", "diverged", "cancelled"]
Storage = Literal["local", "mlflow"]  # the server's LIFTPLACE_STORAGE


@dataclass
class JobSpec:
    """One unit of work for a worker.

    kind "distill": prune `teacher_path` (or `student_teacher_path` when set) at `student_ratio` and
    distill with `method` from `teacher_path`.
    kind "teacher": train a teacher, either a fresh `preset` or, with `base_teacher_path`
    and `prune_ratio`, a pruned-and-retrained copy of another teacher; the result is saved
    in diffusers format to `output_dir/model` (and, with `register_model`, registered in MLflow).

    A teacher is read from its path, or, when its `*_uri` is set (cluster mode), from the MLflow
    model version it names, its files checked against its `*_digest`.
    """

    job_id: int
    kind: JobKind
    output_dir: str  # checkpoints, the student/teacher and artifacts go here (a retry reuses it)
    seed: int = defaults.SEED
    steps: int = defaults.STEPS
    dataset: str = defaults.DATASET  # "digits" or a resolved local image folder
    dataset_name: str = defaults.DATASET
    resolution: int | None = None
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.LEARNING_RATE
    lr_schedule: str = defaults.LR_SCHEDULE
    checkpoint_every: int = defaults.CHECKPOINT_EVERY
    # distill
    teacher_name: str = ""
    teacher_path: str = ""
    # prune the student from this teacher instead of `teacher_path` (one fixed student for several teachers)
    student_teacher_name: str | None = None
    student_teacher_path: str | None = None
    student_ratio: float = defaults.STUDENT_RATIO
    method: str = PAPER_METHOD
    importance: str = defaults.PRUNING_IMPORTANCE
    group_size: int | None = defaults.GROUP_SIZE
    coarse: str = defaults.COARSE_DISTANCE
    curriculum: bool = defaults.CURRICULUM
    ablation: str | None = None
    reduction: str = defaults.REDUCTION
    lambda_kd: float | None = None
    lambda_feat: float | None = None
    featkd_layers: str = FEATKD_LAYERS
    # teacher
    preset: str | None = None
    base_teacher_path: str | None = None
    prune_ratio: float | None = None
    # Cluster mode (the server's LIFTPLACE_STORAGE=mlflow): each teacher above also as a version of MLflow's
    # model registry, `models:/<name>/<version>`, with the sha256 digest of its files (worker.teacher_store).
    # When set, the worker loads the teacher from its node's cache of the registry and the path is only
    # recorded (it names a folder of the API's host).
    teacher_uri: str | None = None
    teacher_digest: str | None = None
    student_teacher_uri: str | None = None
    student_teacher_digest: str | None = None
    base_teacher_uri: str | None = None
    base_teacher_digest: str | None = None
    # kind "teacher" in cluster mode: register the trained teacher as a new version of this registered model
    register_model: str | None = None
    # "mlflow" (cluster mode): the job's checkpoint and outcome also go to its MLflow run (worker.run_store), so
    # an attempt on another node resumes from them, or returns the outcome of one that succeeded; "local": only
    # output_dir holds them.
    storage: Storage = "local"
    # evaluation
    fid_samples: int = defaults.FID_SAMPLES
    fid_features: str = defaults.FID_FEATURES
    sample_steps: int = defaults.DDIM_STEPS
    # tracking
    study_id: int | None = None
    study_name: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "liftplace"
    mlflow_parent_run_id: str | None = None
    # cluster mode: the run an earlier attempt opened (the server recorded it); reopened when output_dir has no
    # run of its own, so one job is one run across attempts and nodes
    mlflow_run_id: str | None = None
    # steps per point of the MLflow history (the mean of those steps); None: steps / MLFLOW_MAX_POINTS
    log_every: int | None = None
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"job spec: unknown fields {sorted(unknown)}")
        return cls(**data)


@dataclass
class JobOutcome:
    """What a worker returns when a job ends (also when it fails)."""

    job_id: int
    status: Outcome
    reason: str = ""
    diverged_step: int | None = None
    steps_done: int = 0
    fid: float | None = None
    fid_metric: str | None = None  # "fid_digits" or "fid_inception": the features behind `fid`
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    model_dir: str | None = None  # the saved student/teacher (diffusers format)
    # a teacher job with `register_model`: the model version it registered and its files' digest
    model_version: str | None = None
    model_digest: str | None = None
    parameters: int | None = None
    resumed_from_step: int | None = None
    # where this attempt computed (liftplace.environment.run_environment); empty if it failed before knowing
    environment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_metrics(path: str | Path) -> tuple[list[int], dict[str, list[float | None]]]:
    """A job's metric history from its metrics.jsonl: (steps ascending, {metric: value per step}).

    A step written twice (a resumed run) keeps its later line; a metric missing at a step is
    None there. Unreadable lines (a line cut by a crash) are skipped. A missing file: no steps.
    """
    by_step: dict[int, dict[str, Any]] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return [], {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            step = int(row.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        by_step[step] = row  # later lines supersede earlier ones
    steps = sorted(by_step)
    names = sorted({k for row in by_step.values() for k in row})
    series: dict[str, list[float | None]] = {}
    for name in names:
        values = []
        for s in steps:
            v = by_step[s].get(name)
            values.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
        series[name] = values
    return steps, series
