"""MLflow tracking of one job: exactly one MLflow run per job, across retries and resumes.

The run id is kept in the job's output folder (`output_dir/mlflow_run_id`); a retried job
(same output folder) reopens that run instead of starting another, and the steps it already
logged before the interruption are not logged twice (`output_dir/mlflow_logged_step`). A key
written before the run is created (`output_dir/mlflow_run_key`, also the run's tag
`liftplace.run_key`) finds the run of an attempt that died between creating it and recording
its id, so even then the job keeps one run.

Per-step metrics are buffered and sent with `MlflowClient.log_batch` every few seconds (and
at checkpoints and at the end), never one call per step. Only `MlflowClient` is used (no
fluent `mlflow.start_run` state), so several jobs in one process do not share a run.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from worker.spec import LOGGED_STEP_FILE, RUN_ID_FILE, RUN_KEY_FILE, JobSpec

__all__ = [
    "JobTracker",
    "RUN_KEY_TAG",
    "mlflow_status",
    "spec_params",
    "spec_tags",
]

RUN_KEY_TAG = "liftplace.run_key"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
FLUSH_EVERY_S = 5.0  # a buffered metric reaches MLflow within about this long
FLUSH_AT_METRICS = 900
# Spec fields that are not parameters of the experiment (tags, or tracking configuration that may hold secrets).
_NOT_PARAMS = {"attempt", "mlflow_tracking_uri", "mlflow_parent_run_id", "mlflow_experiment", "extra"}

_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "cancelled": "KILLED"}

T = TypeVar("T")


def mlflow_status(outcome_status: str) -> str:
    """The MLflow run status for a job outcome: FINISHED, FAILED (also diverged) or KILLED."""
    return _STATUS.get(outcome_status, "FAILED")


def mlflow_retry(fn: Callable[..., T], *args: Any, attempts: int = 4, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying transient errors (a locked SQLite store, a busy server)."""
    delay = 0.25
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def spec_params(spec: JobSpec) -> dict[str, str]:
    """The spec's fields as MLflow params (strings); `extra` entries as `extra.<key>`."""
    data = spec.to_dict()
    params = {k: v for k, v in data.items() if k not in _NOT_PARAMS}
    params.update({f"extra.{k}": v for k, v in (data.get("extra") or {}).items()})
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}


def spec_tags(spec: JobSpec) -> dict[str, str]:
    """The tags that identify a job's run (study, teacher, method, seed, ...); None values are left out."""
    if spec.kind == "teacher":
        teacher = spec.teacher_name or spec.preset or Path(spec.output_dir).name
        method = "teacher"
    else:
        teacher = spec.teacher_name or Path(spec.teacher_path).name
        method = spec.method
    tags: dict[str, Any] = {
        "job_id": spec.job_id,
        "kind": spec.kind,
        "study_id": spec.study_id,
        "study_name": spec.study_name,
        "teacher": teacher,
        "method": method,
        "seed": spec.seed,
        "student_ratio": spec.student_ratio if spec.kind == "distill" else spec.prune_ratio,
        "student_teacher": spec.student_teacher_name if spec.kind == "distill" else None,
        "dataset": spec.dataset_name,
        "attempt": spec.attempt,
    }
    if spec.mlflow_parent_run_id:
        tags["mlflow.parentRunId"] = spec.mlflow_parent_run_id
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}


def _run_name(spec: JobSpec) -> str:
    if spec.kind == "teacher":
        what = spec.preset or (f"pruned {spec.prune_ratio}" if spec.prune_ratio else "teacher")
        return f"job-{spec.job_id} teacher {spec.teacher_name or what} seed {spec.seed}"
    return f"job-{spec.job_id} {spec.method} r{spec.student_ratio} seed {spec.seed}"


def _default_artifact_location(tracking_uri: str | None) -> str | None:
    """For a SQLite store, artifacts beside the database (`<db folder>/mlartifacts`), not in the cwd."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        from urllib.parse import unquote

        db = Path(unquote(tracking_uri[len("sqlite:///"):])).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class JobTracker:
    """The MLflow run of one job. Create with `JobTracker.start(spec)`; end with `end(status)`."""

    def __init__(self, client, run_id: str, output_dir: Path, *, resumed: bool, last_logged_step: int):
        self.client = client
        self.run_id = run_id
        self.output_dir = output_dir
        self.resumed = resumed  # True when an earlier attempt's run was reopened
        self.last_logged_step = last_logged_step
        self._buffer: list = []
        self._buffer_max_step = last_logged_step
        self._last_flush = time.monotonic()
        self.errors: list[str] = []  # logging errors that did not stop the job

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def start(cls, spec: JobSpec) -> JobTracker:
        """Open the job's run: the one recorded in output_dir if it still exists, else a new one."""
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        output_dir = Path(spec.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri)
        experiment_id = cls._experiment_id(client, spec)
        run_id = cls._existing_run(client, output_dir, experiment_id)
        if run_id is None and (output_dir / RUN_KEY_FILE).is_file():
            run_id = cls._run_by_key(client, output_dir, experiment_id)
            if run_id is not None:  # an earlier attempt died before recording the id of the run it made
                _write_atomic(output_dir / RUN_ID_FILE, run_id)
        resumed = run_id is not None
        params = [Param(k, v) for k, v in spec_params(spec).items()]
        errors: list[str] = []
        if run_id is None:
            key = uuid.uuid4().hex
            _write_atomic(output_dir / RUN_KEY_FILE, key)  # before the run exists: a retry can find it
            tags = {**spec_tags(spec), RUN_KEY_TAG: key}
            run = mlflow_retry(client.create_run, experiment_id, tags=tags, run_name=_run_name(spec))
            run_id = run.info.run_id
            _write_atomic(output_dir / RUN_ID_FILE, run_id)
            _write_atomic(output_dir / LOGGED_STEP_FILE, "0")
            for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                mlflow_retry(client.log_batch, run_id, params=params[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)
            last = 0
        else:
            mlflow_retry(client.update_run, run_id, status="RUNNING")
            tags = [RunTag(k, v) for k, v in spec_tags(spec).items()]
            mlflow_retry(client.log_batch, run_id, tags=tags, synchronous=True)
            # Again, in case the attempt that made the run died before logging them (same values:
            # MLflow accepts them; a changed value is refused and only reported).
            try:
                for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                    mlflow_retry(client.log_batch, run_id, params=params[i : i + MAX_PARAMS_PER_BATCH],
                                 synchronous=True)
            except Exception as exc:
                errors.append(f"mlflow: could not log the params again: {type(exc).__name__}: {exc}")
            last = _read_int(output_dir / LOGGED_STEP_FILE)
        tracker = cls(client, run_id, output_dir, resumed=resumed, last_logged_step=last)
        tracker.errors.extend(errors)
        return tracker

    @staticmethod
    def _experiment_id(client, spec: JobSpec) -> str:
        name = spec.mlflow_experiment
        exp = mlflow_retry(client.get_experiment_by_name, name)
        if exp is None:
            try:
                return client.create_experiment(
                    name, artifact_location=_default_artifact_location(client.tracking_uri)
                )
            except Exception:
                exp = mlflow_retry(client.get_experiment_by_name, name)  # created meanwhile by another job
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise ValueError(f"mlflow: the experiment {name!r} is deleted; restore it or use another experiment name")
        return exp.experiment_id

    @staticmethod
    def _existing_run(client, output_dir: Path, experiment_id: str) -> str | None:
        path = output_dir / RUN_ID_FILE
        if not path.is_file():
            return None
        run_id = path.read_text().strip()
        if not run_id:
            return None
        try:
            run = client.get_run(run_id)
        except Exception:  # not in this store (another tracking URI, or deleted for good)
            return None
        if run.info.lifecycle_stage == "deleted" or run.info.experiment_id != experiment_id:
            return None
        return run_id

    @staticmethod
    def _run_by_key(client, output_dir: Path, experiment_id: str) -> str | None:
        """The live run tagged with this folder's run key (made by an attempt that died before recording it)."""
        try:
            key = (output_dir / RUN_KEY_FILE).read_text().strip()
            runs = mlflow_retry(client.search_runs, [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                max_results=1)
        except Exception:  # unreadable key or store trouble: a new run (never a failed job)
            return None
        return runs[0].info.run_id if key and runs else None

    # --- logging -------------------------------------------------------------------------------

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer one training step's metrics; steps an earlier attempt already logged are skipped."""
        if step <= self.last_logged_step:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            v = float(value)
            if math.isfinite(v):  # MLflow stores NaN, but plots and comparisons choke on it
                self._buffer.append(Metric(key, v, ts, step))
        self._buffer_max_step = max(self._buffer_max_step, step)
        if len(self._buffer) >= FLUSH_AT_METRICS or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send the buffered step metrics (in batches of at most 1000) and record the last step sent."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        buf, self._buffer = self._buffer, []
        try:
            for i in range(0, len(buf), MAX_METRICS_PER_BATCH):
                mlflow_retry(self.client.log_batch, self.run_id, metrics=buf[i : i + MAX_METRICS_PER_BATCH],
                       synchronous=True)
        except Exception as exc:  # tracking trouble never stops training; it is reported
            self.errors.append(f"mlflow: could not log metrics: {type(exc).__name__}: {exc}")
            return
        self.last_logged_step = max(self.last_logged_step, self._buffer_max_step)
        try:
            _write_atomic(self.output_dir / LOGGED_STEP_FILE, str(self.last_logged_step))
        except OSError as exc:
            self.errors.append(f"mlflow: could not record the last logged step: {exc}")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log summary metrics (FID, parameter counts) now; non-finite values are left out."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None and math.isfinite(v)]
        if items:
            mlflow_retry(self.client.log_batch, self.run_id, metrics=items, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None]
        if items:
            mlflow_retry(self.client.log_batch, self.run_id, tags=items, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow_retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        mlflow_retry(self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def end(self, status: str) -> None:
        """Flush what is buffered and mark the run FINISHED, FAILED or KILLED."""
        self.flush()
        mlflow_retry(self.client.set_terminated, self.run_id, status=status)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
