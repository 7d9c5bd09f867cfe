"""Run one job: a JobSpec in, a JobOutcome out, everything tracked in one MLflow run.

`run_job(spec, reporter=...)` is what a Ray task calls (see `worker.ray_tasks`), and what a
test or a script can call directly. It never raises for a problem of the job: a bad spec, a
missing teacher, a crash in training all end as status "failed" with a readable reason.

- kind "distill": load the teacher, prune it at `student_ratio` and distill with `method`
  (`liftplace.training.distill`), checkpointing to `output_dir/checkpoint` and always resuming
  from there, so a retried job continues where it stopped. A completed run saves the EMA
  student to `output_dir/model` (diffusers format), a sample grid and teacher-student error
  maps, and computes FID; a diverged run ends "diverged" at its step; a run stopped because
  the reporter asked to cancel ends "cancelled" (its checkpoint stays for a later resume).
- kind "teacher": train a fresh `preset`, or prune `base_teacher_path` at `prune_ratio` and
  retrain it (the paper's smaller teachers), save its EMA to `output_dir/model`, compute FID.
  With `register_model` (cluster mode) a teacher that succeeded is also registered as a new
  version of that model in MLflow's Model Registry (its files uploaded to the job's run first;
  the version and the files' digest go back in the outcome); if that fails, the job fails.

Cluster mode (`storage` "mlflow"): the job's run also holds its latest checkpoint and its outcome
(`worker.run_store`): every checkpoint is uploaded from a background thread; an attempt without a local
checkpoint (another node) reopens the spec's `mlflow_run_id`, downloads the run's checkpoint (sha256
checked) and resumes from it; an attempt whose run holds a succeeded outcome returns it. The run's id
goes to the reporter as soon as the run is open (`run_opened`), so the server can hand it to a retry.

A teacher given as an MLflow model version (`teacher_uri` and `teacher_digest`, likewise for the
student's and the base teacher; cluster mode) is loaded from this node's cache of the registry
(`worker.teacher_store.resolve_teacher`: downloaded once per node, its digest checked); a version
the registry lacks or files with another digest fail the job, naming teacher, version and URI.

An image-folder dataset is read from the spec's path (under the API's LIFTPLACE_DATASETS_DIR) on the node
that runs the job, in every mode: image folders do not travel through MLflow. A node without the folder fails
the job as it starts (`DatasetNotOnNode`, naming the node, the path and the setting), before any teacher is
downloaded or loaded. The embedded digits need nothing.

Files in `output_dir`: checkpoint/last.pt, model/, samples.png, error_map.png (distill and
pruned teachers), job.log, metrics.jsonl, outcome.json, mlflow_run_id, mlflow_run_key,
mlflow_logged_step, mlflow_pending.json (MLflow points not yet sent at the last checkpoint), and in
cluster mode .checkpoint-upload/ (snapshots of checkpoints while they are uploaded). A
job dispatched again after it had succeeded (its server stopped before recording the outcome)
returns that attempt's outcome.json instead of running again.

MLflow gets a bounded history (`worker.tracking`): about `MLFLOW_MAX_POINTS` points per metric,
each the mean of the steps since the last one, sent from a background thread; a job whose run
cannot be opened fails with a reason naming the tracking URI, and what could not be sent later
is reported on the job (`metrics["mlflow_unsent_values"]`, warnings in its log).

metrics.jsonl is the job's metric history for dashboards: one JSON object per line,
``{"step": N, "<metric>": value, ...}`` (finite values only), written every
``max(1, total // METRICS_MAX_LINES)`` steps and at the last step. A resumed run appends again
from its checkpoint, so a step can appear twice: the later line is the one that counts
(`read_metrics` applies that rule).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from liftplace import defaults
from liftplace.config import DistillConfig, TeacherConfig
from liftplace.device import pick_device
from liftplace.environment import run_environment
from worker.spec import (
    ERROR_MAP_FILE,
    LOG_FILE,
    METRICS_FILE,
    OUTCOME_FILE,
    RUN_ID_FILE,
    SAMPLES_FILE,
    JobOutcome,
    JobSpec,
)
from worker.teacher_store import MODEL_ARTIFACT_PATH

__all__ = ["Reporter", "run_job", "training_config", "pick_device", "DatasetNotOnNode", "PROGRESS_INTERVAL_S",
           "GRID_SAMPLES", "ERROR_MAP_IMAGES", "METRICS_MAX_LINES"]

PROGRESS_INTERVAL_S = 1.0  # progress reaches the reporter at most about this often (and at the last step)
GRID_SAMPLES = defaults.GRID_SAMPLES  # images in the sample grid
ERROR_MAP_IMAGES = 8  # columns of the error-map figure
METRICS_MAX_LINES = 1000  # about this many lines of metric history per run, whatever its length
INTERRUPTED_DRAIN_S = 5.0  # an interrupted job waits at most this long for MLflow to take its last points


@runtime_checkable
class Reporter(Protocol):
    """Where a running job reports to (the server's progress store, a test double, ...).

    `progress` is called at most about once a second (and at the last step); `should_cancel`
    once per training step, so an implementation that asks a remote service should cache it;
    `log` gets human-readable lines (start, resume, checkpoints, divergence, FID, end).
    An implementation may also have `run_opened(job_id, run_id)`, called once the job's MLflow run is
    open (the server records the run with the job; in cluster mode a later attempt reopens it).
    """

    def progress(self, job_id: int, step: int, total: int, metrics: dict[str, float]) -> None: ...

    def should_cancel(self, job_id: int) -> bool: ...

    def log(self, job_id: int, line: str) -> None: ...


def training_config(spec: JobSpec) -> TeacherConfig | DistillConfig:
    """The training options of `spec`: a TeacherConfig or DistillConfig (by `kind`) from the spec's fields
    of the same names; options a spec does not carry (ema_decay, grad_clip, ...) keep liftplace's defaults.

    ValueError naming the field for a bad value (the config checks itself).
    """
    config_cls = DistillConfig if spec.kind == "distill" else TeacherConfig
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in spec.to_dict().items() if k in names})


def run_job(spec: JobSpec, *, reporter: Reporter | None = None, device: str | torch.device | None = None) -> JobOutcome:
    """Run `spec` to its end and return the outcome; job problems never raise (status "failed").

    `device` overrides the automatic choice (cuda when available, else cpu).
    """
    return _Job(spec, reporter, device).run()


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Callbacks:
    """Adapts liftplace's TrainingCallback hooks to the reporter and the MLflow tracker."""

    def __init__(self, job: _Job):
        self.job = job
        self.cancelled = False
        self._last_progress = -math.inf
        self._history_every = 1

    def on_start(self, start_step: int, total_steps: int) -> None:
        job = self.job
        if start_step > 0:
            job.resumed_from_step = start_step
            job.log(f"resumed from the checkpoint at step {start_step} of {total_steps}")
        else:
            job.log(f"training {total_steps} steps from scratch")
        job.steps_done = start_step
        self._history_every = max(1, total_steps // METRICS_MAX_LINES)
        if job.tracker is not None:
            job.tracker.begin(start_step, total_steps)
            job.log(f"MLflow history: one point per {job.tracker.log_every} step(s), the mean of those steps")
        job.progress(start_step, total_steps, {})

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        job = self.job
        job.steps_done = step
        if job.tracker is not None:
            job.tracker.log_step(step, metrics)
        if step % self._history_every == 0 or step == total_steps:
            job.record_metrics(step, metrics)
        now = time.monotonic()
        if step == total_steps or now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            job.progress(step, total_steps, metrics)

    def on_checkpoint(self, step: int, path: Path) -> None:
        job = self.job
        journal = None
        if job.tracker is not None:
            journal = job.tracker.checkpoint(step)  # what MLflow does not hold yet is recorded beside the checkpoint
        if job.uploader is not None:  # cluster mode: to the run too, from a background thread
            job.uploader.submit(step, path, journal)
        job.log(f"checkpoint at step {step}")

    def on_end(self, result) -> None: ...

    def should_stop(self) -> bool:
        if self.job.cancel_requested():
            self.cancelled = True
        return self.cancelled


class _Job:
    def __init__(self, spec: JobSpec, reporter: Reporter | None, device):
        self.spec = spec
        self.reporter = reporter
        self.device_arg = device
        self.device: torch.device | None = None
        self.out = Path(spec.output_dir)
        self.tracker = None
        self.uploader = None  # cluster mode: worker.run_store.CheckpointUploader
        self.steps_done = 0
        self.resumed_from_step: int | None = None
        self.model_dir: str | None = None
        self.parameters: int | None = None
        self.earlier_success = False  # dispatched again after it had succeeded: nothing more to do or log
        self.environment: dict[str, str] = {}  # where this attempt computes (liftplace.environment)

    # --- reporting (never lets a reporter problem end the job) -------------------------------------

    def log(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / LOG_FILE, "a") as f:
                f.write(stamped + "\n")
        except OSError:
            pass
        if self.reporter is not None:
            try:
                self.reporter.log(self.spec.job_id, stamped)
            except Exception:
                pass

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.reporter is not None:
            try:
                self.reporter.progress(self.spec.job_id, step, total, _finite(metrics))
            except Exception:
                pass

    def record_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One line of metrics.jsonl (never lets a disk problem end the job)."""
        try:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": step, **_finite(metrics)}) + "\n")
        except (OSError, TypeError, ValueError):
            pass

    def cancel_requested(self) -> bool:
        if self.reporter is None:
            return False
        try:
            return bool(self.reporter.should_cancel(self.spec.job_id))
        except Exception:
            return False

    # --- the job -------------------------------------------------------------------------------------

    def run(self) -> JobOutcome:
        spec = self.spec
        start = time.monotonic()
        try:
            outcome = self._run()
            if self.earlier_success:  # the earlier attempt's outcome stands as it was written and logged
                return outcome
        except Exception as exc:
            outcome = self._outcome("failed", _describe(exc))
            self.log(f"failed: {outcome.reason}")
            for line in traceback.format_exc().rstrip().splitlines():
                self.log(line)
        except BaseException as exc:  # KeyboardInterrupt / SystemExit: a Ray cancel or a shutdown
            self._close_tracker(self._outcome("cancelled", f"interrupted ({type(exc).__name__})"),
                                drain_timeout_s=INTERRUPTED_DRAIN_S)
            raise
        self._close_tracker(outcome)
        outcome.metrics.setdefault("duration_s", round(time.monotonic() - start, 3))
        self.log(f"job {spec.job_id} ended: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
        try:  # atomic: a worker killed mid-write leaves no half outcome for the next attempt to read
            tmp = self.out / (OUTCOME_FILE + ".tmp")
            tmp.write_text(json.dumps(outcome.to_dict(), indent=2, sort_keys=True))
            os.replace(tmp, self.out / OUTCOME_FILE)
        except OSError:
            pass
        if spec.storage == "mlflow" and self.tracker is not None:
            self._outcome_to_run()
        return outcome

    def _outcome_to_run(self) -> None:
        """Cluster mode: outcome.json into the job's run, so no attempt on any node runs a finished job again
        (a failure is a warning: the server records the outcome all the same)."""
        from worker.run_store import upload_outcome
        from worker.tracking import ARTIFACT_RETRY_S

        try:
            upload_outcome(self.tracker.client, self.tracker.run_id, self.out / OUTCOME_FILE,
                           retry_for_s=ARTIFACT_RETRY_S)
        except Exception as exc:
            self.log(f"warning: could not store the outcome in the MLflow run: {_describe(exc)}")

    def _run(self) -> JobOutcome:
        """The job itself; raises for a problem of the job (`run` turns it into a "failed" outcome)."""
        spec = self.spec
        self.device = pick_device(self.device_arg)
        if spec.kind not in ("distill", "teacher"):
            raise ValueError(f"kind: expected 'distill' or 'teacher', got {spec.kind!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"job {spec.job_id} ({spec.kind}, attempt {spec.attempt}) starting on {self.device} "
                 f"(pid {os.getpid()} on {socket.gethostname()})")
        self.environment = run_environment(self.device)
        self.log("environment: " + ", ".join(f"{k} {v}" for k, v in self.environment.items()))
        self.progress(0, spec.steps, {})  # the first report: the server now shows the job as running
        if (earlier := _earlier_success(self.out, spec) or self._earlier_success_in_run()) is not None:
            # Dispatched again after it had finished (its server stopped before recording the
            # outcome): the result stands; sampling and scoring again would log it twice.
            self.log(f"job {spec.job_id} already succeeded in an earlier attempt; returning that outcome")
            self.earlier_success = True
            return earlier
        if self.cancel_requested():
            return self._outcome("cancelled", "cancelled before it started")
        from worker.tracking import JobTracker

        local_run = (self.out / RUN_ID_FILE).is_file()
        self.tracker = JobTracker.start(spec)
        self.log(f"MLflow run {self.tracker.run_id} ({'reopened' if self.tracker.resumed else 'new'})")
        self._run_opened(self.tracker.run_id)
        self._record_environment()
        _check_dataset_here(spec)  # before anything is downloaded or loaded
        if spec.storage == "mlflow":
            self._checkpoint_from_run(reopened_elsewhere=self.tracker.resumed and not local_run)
        config = training_config(spec)
        if isinstance(config, DistillConfig):
            return self._distill(config)
        return self._teacher(config)

    def _record_environment(self) -> None:
        """Where this attempt computes (processor, threads, library versions: a seed's numbers depend on them)
        as the run's `liftplace.env.*` tags (a resumed attempt on another node overwrites them; the job's log
        keeps every attempt's line). A tracking problem is reported, not raised."""
        from worker.tracking import ENV_TAG_PREFIX

        try:
            self.tracker.set_tags({f"{ENV_TAG_PREFIX}{k}": v for k, v in self.environment.items()})
        except Exception as exc:
            self.tracker.errors.append(f"mlflow: could not record the environment: {_describe(exc)}")

    def _outcome(self, status: str, reason: str = "", **fields) -> JobOutcome:
        run_id = self.tracker.run_id if self.tracker is not None else _recorded_run_id(self.out)
        base = dict(
            job_id=self.spec.job_id,
            status=status,
            reason=reason,
            steps_done=self.steps_done,
            mlflow_run_id=run_id,
            model_dir=self.model_dir,
            parameters=self.parameters,
            resumed_from_step=self.resumed_from_step,
            environment=dict(self.environment),
        )
        base.update(fields)
        return JobOutcome(**base)

    def _run_opened(self, run_id: str) -> None:
        """Tell the reporter the run's id (`run_opened`, when it has one): the server records it with the job and
        hands it to a later attempt (cluster mode), which may run on a node that has none of this one's files."""
        hook = getattr(self.reporter, "run_opened", None)
        if hook is not None:
            try:
                hook(self.spec.job_id, run_id)
            except Exception:
                pass

    def _earlier_success_in_run(self) -> JobOutcome | None:
        """Cluster mode: the succeeded outcome the job's run holds (an attempt on another node finished it),
        else None. RunStoreUnavailable (naming MLflow) when the run cannot be read: a job never runs again
        for want of knowing it had finished."""
        spec = self.spec
        run_id = spec.mlflow_run_id or _recorded_run_id(self.out)
        if spec.storage != "mlflow" or not run_id:
            return None
        from mlflow import MlflowClient

        from worker.retry import quiet_mlflow_http_retries
        from worker.run_store import fetch_outcome
        from worker.tracking import start_timeout_s

        quiet_mlflow_http_retries()
        client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri)
        data = fetch_outcome(client, run_id, spec.job_id, tracking_uri=spec.mlflow_tracking_uri,
                             retry_for_s=start_timeout_s())
        if not data or data.get("status") != "succeeded":
            return None
        try:
            return JobOutcome(**data)
        except TypeError:  # written by another version of liftplace: not an outcome this one can stand by
            return None

    def _checkpoint_from_run(self, *, reopened_elsewhere: bool) -> None:
        """Cluster mode: when the run holds a checkpoint newer than the local one (none here: another node ran
        the job; an older one: this node ran an earlier attempt, another a later one), download it so the
        training resumes from it; the history then continues where MLflow has it. Then upload every
        checkpoint to the run."""
        from liftplace.training import CHECKPOINT_NAME
        from worker.run_store import CheckpointUploader, fetch_checkpoint
        from worker.tracking import start_timeout_s

        tracker = self.tracker
        local = self.out / "checkpoint" / CHECKPOINT_NAME
        got = None
        if tracker.resumed:
            t0 = time.monotonic()
            got = fetch_checkpoint(tracker.client, tracker.run_id, local, tracking_uri=self.spec.mlflow_tracking_uri,
                                   retry_for_s=start_timeout_s(), newer_than=_checkpoint_step(local))
            if got is not None:
                self.log(f"checkpoint of step {got[0]} downloaded from MLflow run {tracker.run_id} "
                         f"({time.monotonic() - t0:.1f} s)")
        if reopened_elsewhere or got is not None:
            try:
                tracker.adopt_journal(got[1] if got is not None else None)
            except Exception as exc:
                from worker.retry import safe_uri
                from worker.run_store import RunStoreUnavailable

                raise RunStoreUnavailable(f"cannot read the history of MLflow run {tracker.run_id} at "
                                          f"{safe_uri(self.spec.mlflow_tracking_uri)}: {_describe(exc)}") from exc
        self.uploader = CheckpointUploader(tracker.client, tracker.run_id, self.out)

    def _close_tracker(self, outcome: JobOutcome, *, drain_timeout_s: float | None = None) -> None:
        """Send the history's last points (waiting a bounded time), report what MLflow misses on the job
        (log lines, `outcome.metrics["mlflow_unsent_values"]`, run tags), then end the run."""
        tracker = self.tracker
        if tracker is None:
            return
        from worker.tracking import drain_timeout_s as default_drain_s
        from worker.tracking import mlflow_status

        if self.uploader is not None:  # the last checkpoint in the run: a retry elsewhere resumes from it
            self.uploader.close(drain_timeout_s if drain_timeout_s is not None else default_drain_s())
            tracker.errors.extend(self.uploader.errors)
            if self.uploader.uploads:
                took = [s for _, s in self.uploader.uploads]
                self.log(f"{len(took)} checkpoint(s) uploaded to the MLflow run, the last of step "
                         f"{self.uploader.uploads[-1][0]} ({sum(took) / len(took):.2f} s each on average, in the "
                         "background)")
        unsent = tracker.drain(drain_timeout_s)
        if unsent:
            outcome.metrics["mlflow_unsent_values"] = float(unsent)
        note = tracker.history_note()
        for err in tracker.errors:
            self.log(f"warning: {err}")
        if note:
            self.log(f"warning: MLflow history incomplete: {note}")
        reported = len(tracker.errors)
        try:
            tags = {"outcome": outcome.status, "reason": outcome.reason or None, "steps_done": outcome.steps_done,
                    "liftplace.history_missing": note}
            if outcome.diverged_step is not None:
                tags["diverged_step"] = outcome.diverged_step
            if outcome.resumed_from_step is not None:
                tags["resumed_from_step"] = outcome.resumed_from_step
            tracker.set_tags(tags)
            if (self.out / LOG_FILE).is_file():
                tracker.log_artifact(self.out / LOG_FILE)
            tracker.terminate(mlflow_status(outcome.status))
        except Exception as exc:
            self.log(f"warning: could not close the MLflow run: {_describe(exc)}")
        for err in tracker.errors[reported:]:
            self.log(f"warning: {err}")

    # --- kinds ---------------------------------------------------------------------------------------

    def _data(self) -> torch.Tensor:
        from liftplace.data import load_dataset

        data = load_dataset(self.spec.dataset, self.spec.resolution)
        self.log(f"data {self.spec.dataset_name}: {data.shape[0]} images of {tuple(data.shape[1:])}")
        return data

    def _distill(self, config: DistillConfig) -> JobOutcome:
        from liftplace.models import count_parameters, load_unet
        from liftplace.training import distill

        spec = self.spec
        if not spec.teacher_path and not spec.teacher_uri:
            raise ValueError("teacher_path: a distill job needs the teacher's model folder (or teacher_uri)")
        location = self._teacher_location("teacher", spec.teacher_name, spec.teacher_path, spec.teacher_uri,
                                          spec.teacher_digest)
        teacher = load_unet(location, device=self.device)
        self.log(f"teacher {spec.teacher_name or spec.teacher_path}: {count_parameters(teacher):,} parameters")
        data = self._data()
        other = spec.student_teacher_path or spec.student_teacher_uri
        student = self._student_of_other_teacher(data, config) if other else None
        result = distill(teacher, data=data, student=student, config=config, device=self.device,
                         checkpoint_dir=self.out / "checkpoint", resume=True, callbacks=[_Callbacks(self)])
        counts = {
            "student_parameters": result.parameters,
            "teacher_parameters": result.teacher_parameters,
            "remaining_fraction": result.parameters / max(1, result.teacher_parameters),
        }
        return self._after_training(result, counts, reference=teacher, data=data)

    def _student_of_other_teacher(self, data: torch.Tensor, config: DistillConfig) -> torch.nn.Module:
        """The student pruned from `student_teacher_path`, as distill() would prune the distilling teacher
        (same ratio, importance, seed): the paper distils one fixed student, pruned from the largest
        teacher, from every teacher."""
        from liftplace.models import load_unet
        from liftplace.pruning import prune

        spec = self.spec
        location = self._teacher_location("student_teacher", spec.student_teacher_name, spec.student_teacher_path,
                                          spec.student_teacher_uri, spec.student_teacher_digest)
        source = load_unet(location, device=self.device)
        pruned = prune(source, config.student_ratio, config.importance, data=data, seed=config.seed)
        self.log(f"student pruned from teacher {spec.student_teacher_name or spec.student_teacher_path} at "
                 f"{config.student_ratio} ({config.importance}): {pruned.params_before:,} -> "
                 f"{pruned.params_after:,} parameters")
        return pruned.model

    def _teacher(self, config: TeacherConfig) -> JobOutcome:
        from liftplace.models import build_unet, count_parameters, load_unet
        from liftplace.training import train_teacher

        spec = self.spec
        data = self._data()
        reference = None
        counts: dict[str, float] = {}
        if (spec.base_teacher_path or spec.base_teacher_uri) and spec.prune_ratio is not None:
            from liftplace.pruning import prune

            location = self._teacher_location("base_teacher", None, spec.base_teacher_path, spec.base_teacher_uri,
                                              spec.base_teacher_digest)
            base = load_unet(location, device=self.device)
            pruned = prune(base, spec.prune_ratio, spec.importance, data=data, seed=spec.seed)
            model = pruned.model
            reference = base
            counts["base_teacher_parameters"] = pruned.params_before
            self.log(f"pruned {spec.base_teacher_uri or spec.base_teacher_path} at {spec.prune_ratio} "
                     f"({spec.importance}): {pruned.params_before:,} -> {pruned.params_after:,} parameters; retraining")
        elif spec.preset:
            model = build_unet(spec.preset, sample_size=data.shape[-1], in_channels=data.shape[1], seed=spec.seed)
            self.log(f"preset {spec.preset}: {count_parameters(model):,} parameters")
        else:
            raise ValueError("teacher job: needs either `preset`, or `base_teacher_path` with `prune_ratio`")
        result = train_teacher(model, data, config, device=self.device, checkpoint_dir=self.out / "checkpoint",
                               resume=True, callbacks=[_Callbacks(self)])
        counts["teacher_parameters"] = result.parameters
        return self._after_training(result, counts, reference=reference, data=data)

    # --- after training: save, sample, error maps, FID ---------------------------------------------

    def _after_training(self, result, counts: dict[str, float], *, reference, data: torch.Tensor) -> JobOutcome:
        """The outcome of a finished run: diverged or cancelled as is; a completed one saved, sampled and scored."""
        self.steps_done = result.steps
        self.parameters = result.parameters
        self.tracker.end_training()
        self.tracker.log_metrics(counts, step=result.steps)
        metrics = {**_finite(result.last_metrics), **counts}
        if result.outcome == "diverged":
            self.log(f"diverged at step {result.diverged_step}: the loss or its gradient is not finite")
            return self._outcome("diverged", f"diverged at step {result.diverged_step}",
                                 diverged_step=result.diverged_step, metrics=metrics)
        if result.outcome == "stopped":
            self.log(f"cancelled at step {result.steps} of {result.total_steps} (checkpoint kept for a resume)")
            return self._outcome("cancelled", f"cancelled at step {result.steps} of {result.total_steps}",
                                 metrics=metrics)
        model, model_dir = self._save_model(result, counts)
        t0 = time.monotonic()
        images = self._sample(model, result.steps, reference, data, metrics)
        if self.spec.storage == "mlflow" and not self.spec.register_model:
            # Cluster mode: the run is the model's only home off this node (loadable anywhere as
            # runs:/<run id>/model), so a failed upload fails the job.
            self.tracker.upload_artifacts(model_dir, MODEL_ARTIFACT_PATH)
        elif not self.spec.register_model:  # registering uploads it (and a failed upload fails the job)
            self.tracker.log_artifacts(model_dir, MODEL_ARTIFACT_PATH)
        outcome = self._score(images, result.steps, metrics, t0)
        if self.spec.register_model and outcome.status == "succeeded":
            self._register(model_dir, outcome)
        return outcome

    def _register(self, model_dir: Path, outcome: JobOutcome) -> None:
        """Upload the trained teacher to the job's run and register it as a version of `register_model`
        (the version of the same files if one exists: a retried registration); raises if either fails."""
        from worker.teacher_store import SOURCE_TAG, folder_digest, model_uri, register_version

        spec = self.spec
        assert spec.register_model is not None
        digest = folder_digest(model_dir)
        self.tracker.upload_artifacts(model_dir, MODEL_ARTIFACT_PATH)
        source = "pruned" if spec.prune_ratio is not None else "preset"
        ref = register_version(self.tracker.client, spec.register_model, self.tracker.run_id, digest,
                               tags={SOURCE_TAG: source, "job_id": str(spec.job_id)})
        outcome.model_version, outcome.model_digest = ref.version, ref.digest
        self.log(f"registered the teacher as {model_uri(ref.name, ref.version)} (sha256 {digest})")

    def _teacher_location(self, role: str, name: str | None, path: str | None, uri: str | None,
                          digest: str | None) -> str | Path:
        """Where to load a teacher from: its path, or (with `uri`) its folder in this node's registry cache."""
        if not uri:
            if not path:
                raise ValueError(f"{role}_path: the spec names no folder and no model version for the {role}")
            return path
        if not digest:
            raise ValueError(f"{role}_digest: {role}_uri {uri} comes without the digest of its files")
        from worker.teacher_store import resolve_teacher

        t0 = time.monotonic()
        folder = resolve_teacher(uri, digest, tracking_uri=self.spec.mlflow_tracking_uri)
        self.log(f"{role.replace('_', ' ')} {name or uri}: {uri} (sha256 {digest[:12]}...) from this node's "
                 f"cache {folder} ({time.monotonic() - t0:.1f} s)")
        return folder

    def _save_model(self, result, counts: dict[str, float]) -> tuple[torch.nn.Module, Path]:
        """Save the EMA model (diffusers format, with the spec and the run's summary) to output_dir/model."""
        from liftplace.models import save_unet

        spec = self.spec
        model = result.ema_model.eval()
        summary = {"job": spec.to_dict(), "outcome": result.outcome, "steps": result.steps,
                   "last_metrics": _finite(result.last_metrics), **counts}
        model_dir = save_unet(model, self.out / "model", extra=summary)
        self.model_dir = str(model_dir)
        self.log(f"saved the {'student' if spec.kind == 'distill' else 'teacher'} (EMA) to {model_dir}")
        return model, model_dir

    def _sample(self, model, step: int, reference, data: torch.Tensor, metrics: dict[str, float]) -> torch.Tensor:
        """Sample the images of the FID (or a grid's worth without FID); save the grid and, with a
        reference model, the error maps (their means go into `metrics`); log both figures."""
        from liftplace.sampling import sample, save_grid

        spec = self.spec
        n = spec.fid_samples if spec.fid_samples >= 2 else GRID_SAMPLES  # fid_samples 0: no FID
        images = sample(model, n, seed=spec.seed, num_inference_steps=spec.sample_steps, device=self.device)
        h = images.shape[-1]
        grid = save_grid(images[:GRID_SAMPLES], self.out / SAMPLES_FILE, scale=max(1, min(8, 128 // h)))
        if reference is not None:
            self._error_maps(reference, model, data, step, metrics, scale=max(1, min(8, 64 // h)))
        self.tracker.log_artifact(grid)
        return images

    def _error_maps(self, reference, model, data: torch.Tensor, step: int, metrics: dict[str, float], *,
                    scale: int) -> None:
        """Teacher-student error maps of a few training images: the figure, and its mean per timestep."""
        from liftplace.diagnostics import ERROR_MAP_TIMESTEPS, error_maps, error_means, save_error_maps

        seed = self.spec.seed
        idx = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))[:ERROR_MAP_IMAGES]
        maps = error_maps(reference, model, data[idx], ERROR_MAP_TIMESTEPS, seed=seed)
        emap = save_error_maps(maps, self.out / ERROR_MAP_FILE, scale=scale)
        errors = {f"error_t{t}": v for t, v in error_means(maps, ERROR_MAP_TIMESTEPS).items()}
        metrics.update(errors)
        self.tracker.log_metrics(errors, step=step)
        self.tracker.log_artifact(emap)

    def _score(self, images: torch.Tensor, step: int, metrics: dict[str, float], t0: float) -> JobOutcome:
        """The FID of `images` ("succeeded"), none when fid_samples < 2, or "diverged" for samples not finite."""
        from liftplace.fid import DivergedSamplesError, compute_fid

        spec = self.spec
        if spec.fid_samples < 2:
            self.log("no FID (fid_samples < 2)")
            return self._outcome("succeeded", "", metrics=_finite(metrics))
        try:
            fid = compute_fid(images, spec.dataset, features=spec.fid_features, seed=spec.seed, device=self.device)
        except DivergedSamplesError as exc:
            self.log(f"the samples hold NaN or inf values after step {step}: {exc}")
            return self._outcome("diverged", f"samples not finite after step {step} (diverged sampling)",
                                 diverged_step=step, metrics=metrics)
        metrics[fid.metric_name] = fid.fid
        self.tracker.log_metrics({fid.metric_name: fid.fid}, step=step)
        self.log(f"{fid.metric_name} = {fid.fid:.4f} ({fid.num_samples} samples, {spec.sample_steps} DDIM steps, "
                 f"{time.monotonic() - t0:.1f} s)")
        return self._outcome("succeeded", "", fid=fid.fid, fid_metric=fid.metric_name, metrics=_finite(metrics))


class DatasetNotOnNode(FileNotFoundError):
    """The job's image-folder dataset is not on the node that runs it."""


def _check_dataset_here(spec: JobSpec) -> None:
    """An image-folder dataset must be on this node, at the path the API resolved (`spec.dataset`: the folder
    under the API's LIFTPLACE_DATASETS_DIR). Image folders do not travel: every node that runs jobs holds them at
    that same path (docs/deploy.md). DatasetNotOnNode naming the node, the path and the setting when it is not
    there, rather than an error from deep in the data loading. The embedded datasets are always here."""
    if spec.dataset in defaults.EMBEDDED_DATASETS or Path(spec.dataset).is_dir():
        return
    folder = Path(spec.dataset)
    raise DatasetNotOnNode(
        f"dataset {spec.dataset_name!r}: the image folder {folder} is not on node {socket.gethostname()}; every node "
        f"that runs jobs needs it at that path: put the folder {folder.name!r} into {folder.parent} on this node, the "
        "API's LIFTPLACE_DATASETS_DIR (with docker compose: into HOST_DATASETS_DIR of this host, mounted there)")


# Spec fields that may change between attempts of one job without making it another job.
_NOT_IDENTITY = ("attempt", "mlflow_parent_run_id", "mlflow_run_id", "storage")


def _earlier_success(out: Path, spec: JobSpec) -> JobOutcome | None:
    """The outcome of an earlier attempt of this same job that succeeded, else None.

    Read from `out/outcome.json`; the model it names must record this spec (save_unet's
    `extra["job"]`, compared without `_NOT_IDENTITY`), so a folder left by another job is never
    taken for this one's result.
    """
    from liftplace.models import LIFTPLACE_META_FILE

    try:
        outcome = JobOutcome(**json.loads((out / OUTCOME_FILE).read_text()))
        if outcome.status != "succeeded" or outcome.job_id != spec.job_id or not outcome.model_dir:
            return None
        saved = json.loads((Path(outcome.model_dir) / LIFTPLACE_META_FILE).read_text())["extra"]["job"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    current = spec.to_dict()
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in current.items() if k not in _NOT_IDENTITY):
        return None
    return outcome


def _checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint file at `path`; None when there is none (or it cannot be read: a resume
    from it would fail all the same). Memory-mapped: the weights are not read."""
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])
    except Exception:
        return None


def _recorded_run_id(out: Path) -> str | None:

    try:
        return (out / RUN_ID_FILE).read_text().strip() or None
    except OSError:
        return None
