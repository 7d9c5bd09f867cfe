"""MLflow tracking of one job: exactly one MLflow run per job, across retries and resumes.

The run id is kept in the job's output folder (`output_dir/mlflow_run_id`); a retried job
(same output folder) reopens that run instead of starting another, and the steps it already
logged before the interruption are not logged twice (`output_dir/mlflow_logged_step`). In
cluster mode the spec also carries the run id the server recorded (`JobSpec.mlflow_run_id`): an
attempt on another node, whose output folder is empty, reopens that run, and `adopt_journal`
takes the history's position from MLflow itself (worker.run_store brings the checkpoint). A key
written before the run is created (`output_dir/mlflow_run_key`, also the run's tag
`liftplace.run_key`) finds the run of an attempt that died between creating it and recording
its id, so even then the job keeps one run.

History: at most about `MLFLOW_MAX_POINTS` points per metric, whatever the run's length
(`worker.history`: each point is the mean of the steps since the last one, with min/max of the
losses and the gradient norm; the last step's values and the FID are exact). Points go through
a bounded queue that a background thread sends (`worker.sender`), so training never waits on
the tracking server; if MLflow is unreachable mid-job the points wait and go when it is back,
and what could not be sent is counted and reported on the job. A checkpoint writes what is not
yet confirmed sent (and the open window) to `output_dir/mlflow_pending.json`: a job resumed
from that checkpoint sends it, so everything before a checkpoint is in MLflow or recorded as
missing (`history_gaps`). Opening the run must succeed: a job that cannot reach MLflow at start
fails with a reason naming the tracking URI.

Only `MlflowClient` is used (no fluent `mlflow.start_run` state), so several jobs in one process
do not share a run. Run metadata is made for MLflow's compare view: parameters are the
experiment's (names, not paths; a teacher run has no distillation parameters), paths and ids
are tags.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker.history import Point, Window, log_every_for
from worker.retry import is_transient, mlflow_retry, quiet_mlflow_http_retries, safe_uri
from worker.sender import MetricSender
from worker.spec import LOGGED_STEP_FILE, RUN_ID_FILE, RUN_KEY_FILE, JobSpec

__all__ = [
    "JobTracker",
    "KIND_TAG",
    "PENDING_FILE",
    "RUN_KEY_TAG",
    "TrackingUnavailable",
    "drain_timeout_s",
    "mlflow_retry",
    "mlflow_status",
    "source_tags",
    "spec_params",
    "spec_tags",
    "start_timeout_s",
]

RUN_KEY_TAG = "liftplace.run_key"
ENV_TAG_PREFIX = "liftplace.env."  # a job's run: where its latest attempt computed (liftplace.environment)
KIND_TAG = "liftplace.kind"  # "distill", "teacher", or "study" (the server's parent runs): one key for all
PENDING_FILE = "mlflow_pending.json"  # points not confirmed sent at the last checkpoint (and at the end)
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
FLUSH_EVERY_S = 5.0  # a point reaches MLflow within about this long
MAX_PENDING_VALUES = 100_000  # metric values waiting for MLflow at most (a whole bounded history is ~50K)
START_TIMEOUT_ENV = "LIFTPLACE_MLFLOW_START_TIMEOUT_S"  # how long a job tries to open its run
START_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_ENV = "LIFTPLACE_MLFLOW_DRAIN_TIMEOUT_S"  # how long a job's end waits for MLflow to take its points
DRAIN_TIMEOUT_S = 60.0
ARTIFACT_RETRY_S = 60.0
# Every training step's metrics hold it (liftplace.training), so its last step in MLflow is the history's
HISTORY_KEY = "loss_total"

# Spec fields that are parameters of every run, of distillation runs, and of teacher runs; `teacher`
# and `student_teacher` are names (spec: teacher_name, student_teacher_name), `dataset` the dataset's name.
_COMMON_PARAMS = ("dataset", "resolution", "steps", "batch_size", "lr", "lr_schedule", "checkpoint_every", "seed",
                  "fid_samples", "fid_features", "sample_steps")
_DISTILL_PARAMS = ("teacher", "student_teacher", "student_ratio", "method", "importance", "group_size", "coarse",
                   "curriculum", "ablation", "reduction", "lambda_kd", "lambda_feat")
_TEACHER_PARAMS = ("teacher", "preset", "prune_ratio", "importance")
# Left out when None: "not set" (the method's lambdas, the dataset's resolution) or not this kind of run.
# None of ablation and group_size is a setting (no ablation; one group), logged as such.
_OPTIONAL_PARAMS = {"resolution", "student_teacher", "lambda_kd", "lambda_feat", "preset", "prune_ratio",
                    "importance"}

_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "cancelled": "KILLED"}


class TrackingUnavailable(RuntimeError):
    """The job could not open its MLflow run (the message names the tracking URI, without credentials)."""


def mlflow_status(outcome_status: str) -> str:
    """The MLflow run status for a job outcome: FINISHED, FAILED (also diverged) or KILLED."""
    return _STATUS.get(outcome_status, "FAILED")


def _teacher_name(spec: JobSpec) -> str:
    if spec.kind == "teacher":
        return spec.teacher_name or spec.preset or Path(spec.output_dir).name
    return spec.teacher_name or Path(spec.teacher_path).name


def spec_params(spec: JobSpec) -> dict[str, str]:
    """The experiment's parameters of a job as MLflow params (strings): a teacher run only the teacher's,
    a distillation run only its own; names, never paths; `extra` entries as `extra.<key>`."""
    data = spec.to_dict()
    data.update(dataset=spec.dataset_name, teacher=_teacher_name(spec), student_teacher=spec.student_teacher_name)
    if spec.kind == "teacher" and spec.prune_ratio is None:
        data["importance"] = None  # only a pruned teacher has a pruning criterion
    names = _COMMON_PARAMS + (_TEACHER_PARAMS if spec.kind == "teacher" else _DISTILL_PARAMS)
    params = {k: data[k] for k in names if not (k in _OPTIONAL_PARAMS and data[k] is None)}
    params["log_every"] = spec.log_every or log_every_for(spec.steps)
    params.update({f"extra.{k}": v for k, v in (spec.extra or {}).items()})
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}


def source_tags(kind: str) -> dict[str, str]:
    """MLflow's own user and source tags for a run liftplace opens (`kind`: distill, teacher, study)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this container
        user = "liftplace"
    return {"mlflow.user": user, "mlflow.source.name": f"liftplace {kind}", "mlflow.source.type": "JOB"}


def spec_tags(spec: JobSpec) -> dict[str, str]:
    """The tags of a job's run: what identifies it (study, teacher, method, seed, ...), its kind under
    `KIND_TAG`, the paths it read and wrote, MLflow's user and source; None values are left out."""
    distill = spec.kind == "distill"
    dataset_path = spec.dataset if spec.dataset != spec.dataset_name else None
    tags: dict[str, Any] = {
        "job_id": spec.job_id,
        KIND_TAG: spec.kind,
        "study_id": spec.study_id,
        "study_name": spec.study_name,
        "teacher": _teacher_name(spec),
        "method": spec.method if distill else "teacher",
        "seed": spec.seed,
        "student_ratio": spec.student_ratio if distill else spec.prune_ratio,
        "student_teacher": spec.student_teacher_name if distill else None,
        "dataset": spec.dataset_name,
        "attempt": spec.attempt,
        "liftplace.output_dir": spec.output_dir,
        "liftplace.teacher_path": spec.teacher_path if distill else None,
        "liftplace.student_teacher_path": spec.student_teacher_path if distill else None,
        "liftplace.base_teacher_path": None if distill else spec.base_teacher_path,
        "liftplace.teacher_uri": spec.teacher_uri if distill else None,  # cluster mode: MLflow model versions
        "liftplace.student_teacher_uri": spec.student_teacher_uri if distill else None,
        "liftplace.base_teacher_uri": None if distill else spec.base_teacher_uri,
        "liftplace.dataset_path": dataset_path,
        **source_tags(spec.kind),
    }
    if spec.mlflow_parent_run_id:
        tags["mlflow.parentRunId"] = spec.mlflow_parent_run_id
    return {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items() if v is not None and v != ""}


def run_name(spec: JobSpec) -> str:
    """What MLflow lists the run as: teacher, method, ratio, seed (and the job)."""
    teacher = _teacher_name(spec)
    if spec.kind == "teacher":
        how = f"pruned at {spec.prune_ratio}" if spec.prune_ratio is not None else (spec.preset or "trained")
        return f"teacher {teacher} ({how}) seed {spec.seed} · job {spec.job_id}"
    return f"{teacher} · {spec.method} · r{spec.student_ratio} · seed {spec.seed} · job {spec.job_id}"


def _default_artifact_location(tracking_uri: str | None) -> str | None:
    """For a SQLite store, artifacts beside the database (`<db folder>/mlartifacts`), not in the cwd."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        from urllib.parse import unquote

        db = Path(unquote(tracking_uri[len("sqlite:///"):])).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def _seconds(value: str | None, default: float) -> float:
    """A duration from an environment variable's value (unset or not a number: `default`)."""
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default


def start_timeout_s() -> float:
    """LIFTPLACE_MLFLOW_START_TIMEOUT_S: how long a job retries what it needs from MLflow before it starts."""
    return _seconds(os.environ.get(START_TIMEOUT_ENV), START_TIMEOUT_S)


def drain_timeout_s() -> float:
    """LIFTPLACE_MLFLOW_DRAIN_TIMEOUT_S: how long a job's end waits for MLflow to take what is queued."""
    return _seconds(os.environ.get(DRAIN_TIMEOUT_ENV), DRAIN_TIMEOUT_S)


Call = Callable[..., Any]


class JobTracker:
    """The MLflow run of one job. `JobTracker.start(spec)`, `begin` at the training's start, `log_step`
    per step, `checkpoint` at each checkpoint, `drain` then `terminate` at the end."""

    def __init__(self, client, run_id: str, output_dir: Path, *, resumed: bool, last_logged_step: int,
                 log_every: int | None = None, journal: Mapping[str, Any] | None = None):
        self.client = client
        self.run_id = run_id
        self.output_dir = output_dir
        self.resumed = resumed  # True when an earlier attempt's run was reopened
        self.last_logged_step = last_logged_step  # the last step whose point MLflow confirmed
        self.errors: list[str] = []  # tracking trouble that did not stop the job (reported on it)
        self.history_gaps: list[tuple[int, int]] = []  # steps (first, last) whose history is not in MLflow
        self.unsent_values = 0  # metric values that could not be sent
        self._skip_until = last_logged_step  # steps an earlier attempt already logged
        self._log_every_option = log_every
        self.log_every = log_every or 1
        self._total = 0
        self._window = Window()
        self._journal = dict(journal or {})
        self._drained = False
        self._sender = MetricSender(self._send, on_sent=self._sent, max_values=MAX_PENDING_VALUES,
                                    flush_every_s=FLUSH_EVERY_S, name=f"mlflow-{run_id[:8]}")

    def _resend(self, until_step: int | None) -> int:
        """Queue the points an earlier attempt had not sent (up to `until_step`: the steps after it are
        trained again); returns the last step they cover."""
        last = self._skip_until
        for data in self._journal.pop("pending", None) or []:
            point = Point.from_dict(data)
            if self._skip_until < point.step and (until_step is None or point.step <= until_step):
                self._sender.put(point)
                last = max(last, point.step)
        return last

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def start(cls, spec: JobSpec) -> JobTracker:
        """Open the job's run: the one recorded in output_dir if it still exists, else a new one.

        Transient errors are retried for up to LIFTPLACE_MLFLOW_START_TIMEOUT_S (30 s); then, or for any
        other error, `TrackingUnavailable` naming the tracking URI.
        """
        quiet_mlflow_http_retries()
        from mlflow import MlflowClient

        output_dir = Path(spec.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        timeout = start_timeout_s()
        deadline = time.monotonic() + timeout

        def call(fn: Call, *args: Any, **kwargs: Any) -> Any:
            return mlflow_retry(fn, *args, retry_for_s=max(0.5, deadline - time.monotonic()), **kwargs)

        uri = safe_uri(spec.mlflow_tracking_uri)
        try:
            client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri)
            run_id, resumed, errors = cls._open(client, spec, output_dir, call)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}".replace(spec.mlflow_tracking_uri or "\0", uri)
            if is_transient(exc):
                raise TrackingUnavailable(f"cannot reach MLflow at {uri} (tried for {timeout:.0f} s): {text}") from exc
            raise TrackingUnavailable(f"MLflow at {uri}: {text}") from exc
        last = _read_int(output_dir / LOGGED_STEP_FILE) if resumed else 0
        journal = _read_journal(output_dir / PENDING_FILE) if resumed else None
        if not resumed:
            (output_dir / PENDING_FILE).unlink(missing_ok=True)  # another run's leftovers
        tracker = cls(client, run_id, output_dir, resumed=resumed, last_logged_step=last, log_every=spec.log_every,
                      journal=journal)
        tracker.errors.extend(errors)
        return tracker

    @classmethod
    def _open(cls, client, spec: JobSpec, output_dir: Path, call: Call) -> tuple[str, bool, list[str]]:
        """(run id, reopened?, non-fatal errors): the recorded run, the run of this folder's key, or a new one."""
        from mlflow.entities import Param, RunTag

        experiment_id = cls._experiment_id(client, spec, call)
        run_id = cls._existing_run(client, output_dir, experiment_id, call)
        if run_id is None and spec.mlflow_run_id:  # cluster mode: an earlier attempt's run, maybe on another node
            run_id = cls._live_run(client, spec.mlflow_run_id, experiment_id, call)
            if run_id is not None:
                _write_atomic(output_dir / RUN_ID_FILE, run_id)
        if run_id is None and (output_dir / RUN_KEY_FILE).is_file():
            run_id = cls._run_by_key(client, output_dir, experiment_id, call)
            if run_id is not None:  # an earlier attempt died before recording the id of the run it made
                _write_atomic(output_dir / RUN_ID_FILE, run_id)
        params = [Param(k, v) for k, v in spec_params(spec).items()]
        batches = [params[i : i + MAX_PARAMS_PER_BATCH] for i in range(0, len(params), MAX_PARAMS_PER_BATCH)]
        if run_id is None:
            key = uuid.uuid4().hex
            _write_atomic(output_dir / RUN_KEY_FILE, key)  # before the run exists: a retry can find it
            run = call(client.create_run, experiment_id, tags={**spec_tags(spec), RUN_KEY_TAG: key},
                       run_name=run_name(spec))
            run_id = run.info.run_id
            _write_atomic(output_dir / RUN_ID_FILE, run_id)
            _write_atomic(output_dir / LOGGED_STEP_FILE, "0")
            for batch in batches:
                call(client.log_batch, run_id, params=batch, synchronous=True)
            return run_id, False, []
        call(client.update_run, run_id, status="RUNNING")
        call(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in spec_tags(spec).items()], synchronous=True)
        # Again, in case the attempt that made the run died before logging them (same values: MLflow
        # accepts them; a changed value is refused and only reported).
        try:
            for batch in batches:
                call(client.log_batch, run_id, params=batch, synchronous=True)
        except Exception as exc:
            if is_transient(exc):
                raise
            return run_id, True, [f"mlflow: could not log the params again: {type(exc).__name__}: {exc}"]
        return run_id, True, []

    @staticmethod
    def _experiment_id(client, spec: JobSpec, call: Call) -> str:
        name = spec.mlflow_experiment
        exp = call(client.get_experiment_by_name, name)
        if exp is None:
            try:
                return call(client.create_experiment, name,
                            artifact_location=_default_artifact_location(client.tracking_uri))
            except Exception as exc:
                if is_transient(exc):
                    raise
                exp = call(client.get_experiment_by_name, name)  # created meanwhile by another job
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise ValueError(f"mlflow: the experiment {name!r} is deleted; restore it or use another experiment name")
        return exp.experiment_id

    @staticmethod
    def _existing_run(client, output_dir: Path, experiment_id: str, call: Call) -> str | None:
        path = output_dir / RUN_ID_FILE
        if not path.is_file():
            return None
        return JobTracker._live_run(client, path.read_text().strip(), experiment_id, call)

    @staticmethod
    def _live_run(client, run_id: str, experiment_id: str, call: Call) -> str | None:
        """`run_id` if that run exists, is not deleted and belongs to `experiment_id`, else None."""
        if not run_id:
            return None
        try:
            run = call(client.get_run, run_id)
        except Exception as exc:  # not in this store (another tracking URI, or deleted for good)
            if is_transient(exc):
                raise
            return None
        if run.info.lifecycle_stage == "deleted" or run.info.experiment_id != experiment_id:
            return None
        return run_id

    @staticmethod
    def _run_by_key(client, output_dir: Path, experiment_id: str, call: Call) -> str | None:
        """The live run tagged with this folder's run key (made by an attempt that died before recording it)."""
        try:
            key = (output_dir / RUN_KEY_FILE).read_text().strip()
        except OSError:  # unreadable key: a new run (never a failed job)
            return None
        if not key:
            return None
        try:
            runs = call(client.search_runs, [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                        max_results=1)
        except Exception as exc:
            if is_transient(exc):
                raise
            return None
        return runs[0].info.run_id if runs else None

    # --- the history -----------------------------------------------------------------------------

    def begin(self, start_step: int, total_steps: int) -> None:
        """The training starts (or resumes) after `start_step` of `total_steps`: fix the points' interval,
        take back the window a checkpoint kept, and record the steps whose history was lost."""
        self._total = total_steps
        self.log_every = self._log_every_option or log_every_for(total_steps)
        covered = self._resend(until_step=start_step)
        window = self._journal.get("window")
        if window and window["last_step"] == start_step and window["first_step"] > self._skip_until:
            self._window = Window.from_dict(window)
            covered = start_step
        if start_step > covered:  # the attempt before died between a checkpoint and recording it
            self.history_gaps.append((covered + 1, start_step))
        self._journal = {}

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Add one training step; at the end of a window, queue its point (never waits on MLflow).
        Steps an earlier attempt already logged are skipped."""
        if step <= self._skip_until:
            return
        self._window.add(step, metrics, int(time.time() * 1000))
        if step % self.log_every == 0 or step == self._total:
            self._emit(exact=step == self._total)

    def end_training(self) -> None:
        """Queue the open window (a run stopped or diverged between two points)."""
        self._emit(exact=False)

    def _emit(self, *, exact: bool) -> None:
        point = self._window.point(exact=exact)
        self._window = Window()
        if point is not None:
            self._sender.put(point)

    def checkpoint(self, step: int) -> dict[str, Any]:
        """Record what MLflow has not confirmed yet and the open window (never waits): a job resumed from
        this checkpoint sends them, so the history before it is in MLflow or recorded as missing. Returns
        that record (the journal, as written to mlflow_pending.json)."""
        window = None if self._window.empty else self._window.to_dict()
        return self._write_journal(step, self._sender.pending(), window)

    def adopt_journal(self, journal: Mapping[str, Any] | None) -> None:
        """Resume the history on a node without this run's files (cluster mode): the steps MLflow already
        holds (the last step of `HISTORY_KEY`) are not logged again, and `journal` (the one recorded with the
        checkpoint this attempt resumes from) takes the place of mlflow_pending.json. Call before `begin`."""
        history = mlflow_retry(self.client.get_metric_history, self.run_id, HISTORY_KEY)
        last = max((m.step for m in history), default=0)
        self._skip_until = self.last_logged_step = last
        self._journal = dict(journal or {})
        _write_atomic(self.output_dir / LOGGED_STEP_FILE, str(last))

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Queue summary metrics (FID, parameter counts) at `step`, exact; non-finite values are left out."""
        values = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if values:
            self._sender.put(Point(step, int(time.time() * 1000), values))

    def _send(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, p.timestamp_ms, p.step) for p in points for k, v in p.values.items()]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)

    def _sent(self, step: int) -> None:
        """(sender thread) MLflow holds every point up to `step`: record it for a retry."""
        if step <= self.last_logged_step:
            return
        self.last_logged_step = step
        try:
            _write_atomic(self.output_dir / LOGGED_STEP_FILE, str(step))
        except OSError as exc:
            if not any("last logged step" in e for e in self.errors):
                self.errors.append(f"mlflow: could not record the last logged step: {exc}")

    # --- tags, artifacts, the end ----------------------------------------------------------------

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items() if v is not None]
        if items:
            mlflow_retry(self.client.log_batch, self.run_id, tags=items, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (transient errors retried for a minute); a failure is reported, not raised."""
        self._artifact(self.client.log_artifact, path, artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self._artifact(self.client.log_artifacts, folder, artifact_path)

    def upload_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder (transient errors retried for a minute); unlike `log_artifacts`, a failure raises:
        for files the job's result depends on (a teacher to register)."""
        mlflow_retry(self.client.log_artifacts, self.run_id, str(folder), artifact_path, retry_for_s=ARTIFACT_RETRY_S)

    def _artifact(self, fn: Call, path: str | Path, artifact_path: str | None) -> None:
        try:
            mlflow_retry(fn, self.run_id, str(path), artifact_path, retry_for_s=ARTIFACT_RETRY_S)
        except Exception as exc:
            self.errors.append(f"mlflow: could not log the artifact {Path(path).name}: {type(exc).__name__}: {exc}")

    def drain(self, timeout_s: float | None = None) -> int:
        """Queue the open window and wait (at most `timeout_s`, default LIFTPLACE_MLFLOW_DRAIN_TIMEOUT_S)
        until MLflow holds every point; returns the metric values that could not be sent (kept in
        mlflow_pending.json). Idempotent."""
        if self._drained:
            return self.unsent_values
        self._drained = True
        self._resend(until_step=None)  # the job ended before training (re)started: they are history all the same
        self.end_training()
        if timeout_s is None:
            timeout_s = drain_timeout_s()
        left = self._sender.close(timeout_s)
        self.errors.extend(self._sender.errors)
        self.unsent_values = self._sender.unsent_values + sum(len(p.values) for p in left)
        if left:
            self.errors.append(f"mlflow: {sum(len(p.values) for p in left)} metric values (steps {left[0].step}.."
                               f"{left[-1].step}) still unsent at the end; kept in {PENDING_FILE}")
            self._write_journal(left[-1].step, left, None)
        else:
            (self.output_dir / PENDING_FILE).unlink(missing_ok=True)
        return self.unsent_values

    def history_note(self) -> str | None:
        """What of the history is not in MLflow, in words (None: nothing missing)."""
        parts = [f"steps {a}..{b} lost with an attempt that died after its checkpoint" for a, b in self.history_gaps]
        if self.unsent_values:
            parts.append(f"{self.unsent_values} metric values not sent")
        return "; ".join(parts) or None

    def terminate(self, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED (after `drain`)."""
        mlflow_retry(self.client.set_terminated, self.run_id, status=status)

    def end(self, status: str) -> None:
        """`drain`, then `terminate`."""
        self.drain()
        self.terminate(status)

    def _write_journal(self, step: int, pending: list[Point], window: dict[str, Any] | None) -> dict[str, Any]:
        data = {"step": step, "pending": [p.to_dict() for p in pending], "window": window}
        try:
            _write_atomic(self.output_dir / PENDING_FILE, json.dumps(data))
        except OSError as exc:
            if not any(PENDING_FILE in e for e in self.errors):
                self.errors.append(f"mlflow: could not write {PENDING_FILE}: {exc}")
        return data


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _read_journal(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
