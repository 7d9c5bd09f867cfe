"""The dispatcher: hands queued jobs to the executor and keeps the database in step with it.

A background thread started with the app. Each round it

1. passes cancel requests of dispatched and running jobs to the executor,
2. records the jobs that ended (outcome, teacher readiness, study cells) or whose worker died
   (retried while attempts remain, LIFTPLACE_MAX_ATTEMPTS; the worker resumes from its checkpoint),
3. copies progress and log lines from the executor into the database (a dispatched job's first
   report means its worker has started it: it becomes running), and the MLflow run the worker opened
   (in cluster mode every later attempt of the job reopens that run, on whichever node: JobSpec.mlflow_run_id),
4. requeues in-flight jobs the executor no longer knows (a lost task),
5. fails queued jobs whose teacher failed to train,
6. in cluster mode (LIFTPLACE_STORAGE=mlflow), registers ready teachers that MLflow's model
   registry does not hold yet (local and shipped ones; the teachers it trains a worker registers),
7. claims queued jobs whose teacher is ready (in cluster mode: and registered) and submits them, and
8. logs finished study cells to the study's MLflow parent run.

Claiming is a compare-and-set (``UPDATE jobs SET status='dispatched' WHERE id=? AND
status='queued'``), committed before the submit, so a job is never dispatched twice. A job is
"dispatched" while it waits in the executor for a worker and "running" once the worker has
started it, so the queue never shows more jobs running than there are workers. At start-up
every job left dispatched or running by an earlier server is re-attached when the executor still
runs it (a Ray cluster: jobs outlive the server), else requeued (or marked cancelled if a cancel
was asked for): a restart loses no queued job, leaves none stuck and restarts none that still
runs. One dispatcher per database.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from liftplace.job_status import IN_FLIGHT_STATUSES, TERMINAL_STATUSES
from liftplace.tables import render_panels
from server import aggregation
from server.executors import Executor, Finished
from server.models import Dataset, Job, JobLog, Study, StudyCell, Teacher, utcnow
from server.services.lifecycle import add_log, end_job, fail_waiting_on
from server.settings import Settings
from server.tracking import Tracking
from worker.spec import RUN_ID_FILE, JobSpec
from worker.teacher_store import model_uri

log = logging.getLogger(__name__)

MLFLOW_RETRY_S = 30.0  # after an MLflow error, wait this long before logging cells again
START_RETRY_S = 10.0  # after the executor failed to start, wait this long before trying again


def _finite_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """Only finite numbers: NaN/inf are not JSON, and the outcome already says 'diverged'."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[str(k)] = float(v)
    return out


def teacher_path(settings: Settings, teacher: Teacher) -> str:
    """Where a worker finds the teacher: a folder under the teachers root, a trained model, or ``shipped:NAME``
    (a teacher shipped with liftplace: each worker loads its own installed copy, digests checked)."""
    if teacher.source == "local":
        return str(settings.teacher_folder(teacher.folder or teacher.name))
    if teacher.source == "shipped":
        from liftplace.shipped import SHIPPED_PREFIX

        return SHIPPED_PREFIX + (teacher.folder or teacher.name)
    if not teacher.model_dir:
        raise ValueError(f"teacher {teacher.name!r} has no trained model yet")
    return teacher.model_dir


def teacher_reference(settings: Settings, teacher: Teacher) -> dict[str, str | None]:
    """Cluster mode: the teacher's MLflow model version and digest ({"uri", "digest"}); ValueError when it is not
    registered yet. Embedded mode: both None (jobs use the path)."""
    if not settings.teachers_in_registry:
        return {"uri": None, "digest": None}
    if not teacher.model_version or not teacher.model_digest:
        raise ValueError(f"teacher {teacher.name!r} is not in MLflow's model registry yet")
    return {"uri": model_uri(teacher.name, teacher.model_version), "digest": teacher.model_digest}


def teacher_folder_here(settings: Settings, teacher: Teacher) -> Path:
    """The teacher's folder on this host (a shipped teacher's digests checked), to register it; ValueError when
    it is not here (trained on a host that shares no folder with this one)."""
    from liftplace.shipped import resolve_reference

    folder = resolve_reference(teacher_path(settings, teacher))
    if not folder.is_dir():
        raise ValueError(f"its folder {folder} is not on this host")
    return folder


def dataset_location(settings: Settings, dataset: Dataset) -> str:
    """"digits" (embedded) or the dataset's folder under the datasets root."""
    if dataset.kind == "embedded":
        return dataset.name
    return str(settings.dataset_folder(dataset.folder or dataset.name))


def build_spec(settings: Settings, job: Job, *, parent_run_id: str | None = None) -> JobSpec:
    """The JobSpec of a claimed job: every registered name resolved to a location."""
    known = JobSpec.__dataclass_fields__
    opts = {k: v for k, v in (job.options or {}).items() if k in known}
    dataset = job.dataset
    common: dict[str, Any] = dict(
        job_id=job.id,
        kind=job.kind,
        output_dir=str(settings.jobs_dir / str(job.id)),  # stable across retries: a retry resumes
        seed=job.seed,
        steps=job.steps,
        dataset=dataset_location(settings, dataset),
        dataset_name=dataset.name,
        fid_features=dataset.fid_features,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        mlflow_experiment=settings.mlflow_experiment,
        attempt=max(1, job.attempts),
    )
    if settings.teachers_in_registry:
        # cluster mode: the job's checkpoint and outcome also travel through its MLflow run, which a retry on
        # any node reopens (worker.run_store)
        common.update(storage="mlflow", mlflow_run_id=job.mlflow_run_id)
    if opts.get("resolution") is None:
        opts["resolution"] = dataset.resolution
    if job.kind == "teacher":
        out = job.output_teacher
        assert out is not None
        common.update(teacher_name=out.name, preset=out.preset, prune_ratio=out.prune_ratio)
        if settings.teachers_in_registry:
            common["register_model"] = out.name
        if out.base_teacher is not None:
            ref = teacher_reference(settings, out.base_teacher)
            common.update(base_teacher_path=teacher_path(settings, out.base_teacher), base_teacher_uri=ref["uri"],
                          base_teacher_digest=ref["digest"])
    else:
        assert job.teacher is not None
        ref = teacher_reference(settings, job.teacher)
        common.update(teacher_name=job.teacher.name, teacher_path=teacher_path(settings, job.teacher),
                      teacher_uri=ref["uri"], teacher_digest=ref["digest"],
                      student_ratio=job.student_ratio, method=job.method)
        if job.student_teacher is not None:
            ref = teacher_reference(settings, job.student_teacher)
            common.update(student_teacher_name=job.student_teacher.name,
                          student_teacher_path=teacher_path(settings, job.student_teacher),
                          student_teacher_uri=ref["uri"], student_teacher_digest=ref["digest"])
        if job.study is not None:
            common.update(study_id=job.study.id, study_name=job.study.name, mlflow_parent_run_id=parent_run_id)
    return JobSpec(**{**opts, **common})


class Dispatcher:
    """Moves jobs between the database and an Executor; see the module docstring."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], executor: Executor,
                 tracking: Tracking | None = None, *, recover_on_start: bool = True) -> None:
        self.settings = settings
        self.recover_on_start = recover_on_start
        self.sessions = sessions
        self.executor = executor
        self.tracking = tracking
        self.instance_id = f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.executor_description: str | None = None
        self.error: str | None = None  # the last error of a round, for /api/status
        self.last_round_at: float | None = None  # time.monotonic() when the thread last ended a round (ready check)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._started = False
        self._cancel_sent: set[int] = set()
        self._unrecorded: dict[int, Finished] = {}  # ended in the executor; recording failed, retried next round
        self._mlflow_wait_until = 0.0
        # Cluster mode registers teachers in MLflow's model registry, with or without study tracking.
        self.registry: Tracking | None = tracking
        if settings.teachers_in_registry and self.registry is None:
            self.registry = Tracking(str(settings.mlflow_tracking_uri), settings.mlflow_ui_url,
                                     settings.mlflow_experiment)
        self._registry_wait_until: dict[int, float] = {}  # teacher id -> after a failed registration, retry then

    # --- thread ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background thread (it starts the executor and recovers before the first round)."""
        if self.running:
            return
        self._stop.clear()
        self.last_round_at = time.monotonic()  # the first round is measured from the start
        self._thread = threading.Thread(target=self._loop, name="liftplace-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Run the next round now (a job was submitted or cancelled)."""
        self._wake.set()

    @property
    def started(self) -> bool:
        """Whether the executor is started (and jobs left by an earlier server recovered)."""
        return self._started

    def start_executor(self) -> None:
        """Start the executor and recover jobs an earlier server left running (idempotent)."""
        if self._started:
            return
        self.executor_description = self.executor.start()
        log.info("dispatcher %s: %s", self.instance_id, self.executor_description)
        if self.tracking is not None:
            # Make the MLflow experiment (and a fresh store's tables) now, not during the first
            # dispatch, where it held every queued job back for seconds.
            try:
                self.tracking.experiment_id()
            except Exception as exc:  # MLflow down: studies get their parent run later
                log.warning("MLflow not reachable at start-up: %s: %s", type(exc).__name__, exc)
        if self.recover_on_start:
            self.recover()
        self._started = True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.start_executor()
                self.tick()
                self.error = None
            except Exception as exc:  # a bad round must not end the dispatcher
                log.exception("dispatcher round failed")
                self.error = f"{type(exc).__name__}: {exc}"
                if not self._started:
                    self._stop.wait(START_RETRY_S)
            self.last_round_at = time.monotonic()
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()

    # --- the round ---------------------------------------------------------------------------

    def tick(self) -> None:
        """One round (see the module docstring); tests call it directly instead of the thread."""
        if not self._started:
            self.start_executor()
        self._send_cancels()
        self._collect()
        self._copy_progress()
        self._reconcile()
        self._fail_orphans()
        self._register_teachers()
        self._dispatch()
        self._log_cells()

    def recover(self) -> None:
        """Take over the jobs an earlier server left in flight, then write any study cell whose seeds all
        ended but that has no row (aggregation.repair_cells).

        A job the executor still holds from that server with the same attempt (a cluster: it went on
        training in Ray) is re-attached: claimed by this dispatcher, same attempt, its end recorded when it
        comes (a cancel asked for meanwhile is sent in the next round). Every other in-flight job is
        requeued (it resumes from its checkpoint), or ends cancelled if a cancel was asked for; what the
        executor holds that the database does not expect to run is stopped.
        """
        held = self.executor.attached()
        adopted: set[int] = set()
        with self.sessions.begin() as s:
            for job in s.scalars(select(Job).where(Job.status.in_(IN_FLIGHT_STATUSES)).order_by(Job.id)):
                if held.get(job.id) == job.attempts:
                    job.claimed_by = self.instance_id
                    adopted.add(job.id)
                    add_log(s, job.id, f"the server restarted while this job ran; re-attached to attempt "
                                       f"{job.attempts}, which kept running in Ray")
                elif job.cancel_requested:
                    end_job(s, self.settings, job, "cancelled", "cancelled (the server restarted while it ran)")
                else:
                    job.status, job.claimed_by = "queued", None
                    add_log(s, job.id, "the server restarted while this job ran; requeued (it resumes from its "
                                       "checkpoint)")
        for job_id in sorted(set(held) - adopted):
            log.warning("job %s: held in the executor from an earlier server but not in flight here; stopped", job_id)
            self.executor.discard(job_id)
        if adopted:
            log.info("re-attached to %d job(s) an earlier server left running: %s", len(adopted), sorted(adopted))
        with self.sessions.begin() as s:
            for study_id, teacher, method in aggregation.repair_cells(s):
                log.warning("study %s: cell (%s, %s) had ended without its summary; written now", study_id, teacher,
                            method)

    def _mine(self, s: Session, *, cancel: bool | None = None) -> list[Job]:
        q = select(Job).where(Job.status.in_(IN_FLIGHT_STATUSES), Job.claimed_by == self.instance_id)
        if cancel is not None:
            q = q.where(Job.cancel_requested.is_(cancel))
        return list(s.scalars(q.order_by(Job.id)))

    def _send_cancels(self) -> None:
        with self.sessions() as s:
            ids = [j.id for j in self._mine(s, cancel=True) if j.id not in self._cancel_sent]
        for job_id in ids:
            self.executor.cancel(job_id)
            self._cancel_sent.add(job_id)

    # --- outcomes ----------------------------------------------------------------------------

    def _collect(self) -> None:
        for finished in self.executor.finished():
            self._unrecorded[finished.job_id] = finished
        for job_id, finished in list(self._unrecorded.items()):
            try:
                with self.sessions() as s:
                    offset = s.scalar(select(Job.log_offset).where(Job.id == job_id)) or 0
                lines = self._read_logs(job_id, offset)  # the last lines, before the store forgets them
                self._record(finished, offset, lines)
            except Exception:  # e.g. the database is briefly unreachable: keep the outcome, retry next round
                log.exception("job %s: could not record its end; retrying next round", job_id)
                continue
            del self._unrecorded[job_id]
            self.executor.release(job_id)
            self._cancel_sent.discard(job_id)

    def _read_logs(self, job_id: int, offset: int) -> list[str]:
        try:
            return self.executor.logs(job_id, offset)
        except Exception as exc:  # logs are a convenience; never lose an outcome over them
            log.warning("job %s: could not read its logs: %s", job_id, exc)
            return []

    @staticmethod
    def _store_logs(s: Session, job: Job, offset: int, lines: list[str]) -> None:
        if job.log_offset != offset:  # read from another offset meanwhile (not expected): skip, no duplicates
            return
        for line in lines:
            s.add(JobLog(job_id=job.id, line=line))
        job.log_offset += len(lines)

    def _record(self, finished: Finished, offset: int, lines: list[str]) -> None:
        with self.sessions.begin() as s:
            job = s.get(Job, finished.job_id)
            if job is None or job.status not in IN_FLIGHT_STATUSES:
                log.warning("job %s ended in the executor but is %s in the database; ignored", finished.job_id,
                            job.status if job else "missing")
                return
            self._store_logs(s, job, offset, lines)
            if finished.lost is not None:
                self._lost(s, job, finished.lost)
            else:
                self._apply_outcome(s, job, finished.outcome or {})

    def _lost(self, s: Session, job: Job, why: str) -> None:
        """The worker died: retry while attempts remain (the next attempt resumes), else fail."""
        if job.cancel_requested:
            end_job(s, self.settings, job, "cancelled", f"cancelled (its worker was lost: {why})")
        elif job.attempts < self.settings.max_attempts:
            job.status, job.claimed_by = "queued", None
            add_log(s, job.id, f"attempt {job.attempts} lost ({why}); requeued for attempt {job.attempts + 1} "
                               f"of {self.settings.max_attempts}")
        else:
            end_job(s, self.settings, job, "failed", f"the worker was lost on all {job.attempts} attempts; last: {why}")

    def _apply_outcome(self, s: Session, job: Job, outcome: dict[str, Any]) -> None:
        status = outcome.get("status")
        if status not in TERMINAL_STATUSES:
            status, outcome = "failed", {**outcome, "reason": f"the worker returned an unknown status {status!r}"}
        fid = outcome.get("fid")
        job.fid = float(fid) if isinstance(fid, (int, float)) and math.isfinite(fid) else None
        job.fid_metric = outcome.get("fid_metric")
        job.diverged_step = outcome.get("diverged_step")
        job.parameters = outcome.get("parameters")
        job.resumed_from_step = outcome.get("resumed_from_step")
        env = outcome.get("environment")
        job.environment = {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) and env else None
        job.model_dir = outcome.get("model_dir")
        job.metrics = {**(job.metrics or {}), **_finite_metrics(outcome.get("metrics"))}
        if outcome.get("steps_done"):
            job.progress_step = int(outcome["steps_done"])
            job.progress_total = job.progress_total or job.steps
        if outcome.get("mlflow_run_id"):
            job.mlflow_run_id = outcome["mlflow_run_id"]
            if job.mlflow_experiment_id is None and self.tracking is not None:
                try:
                    job.mlflow_experiment_id = self.tracking.client.get_run(job.mlflow_run_id).info.experiment_id
                except Exception as exc:
                    log.warning("job %s: MLflow run %s not found: %s", job.id, job.mlflow_run_id, exc)
        reason = outcome.get("reason") or ""
        if status == "diverged" and not reason:
            reason = f"diverged at step {job.diverged_step}"
        model = None
        if outcome.get("model_version") and outcome.get("model_digest"):
            model = (str(outcome["model_version"]), str(outcome["model_digest"]))
        elif status == "succeeded" and job.kind == "teacher" and self.settings.teachers_in_registry:
            # a worker of cluster mode registers what it trains; without it no other host could use the teacher
            status, reason = "failed", "the teacher job returned no model version of MLflow's model registry"
        end_job(s, self.settings, job, status, reason, model=model)

    def _fail_orphans(self) -> None:
        """Queued jobs whose teacher failed (e.g. it failed while this server was down)."""
        with self.sessions() as s:
            any_orphan = s.scalar(select(Job.id).join(Teacher, Job.teacher_id == Teacher.id).where(
                Job.status == "queued", Teacher.status == "failed").limit(1))
        if any_orphan is None:
            return
        with self.sessions.begin() as s:
            failed = list(s.scalars(select(Teacher).where(Teacher.status == "failed").where(
                Teacher.id.in_(select(Job.teacher_id).where(Job.status == "queued")))))
            fail_waiting_on(s, self.settings, failed)

    # --- cluster mode: teachers in MLflow's model registry ----------------------------------------

    def _register_teachers(self) -> None:
        """Register every ready teacher that has no model version yet (cluster mode only): local and shipped
        teachers, and ones trained before cluster mode was switched on. A failure (MLflow away, a folder not
        on this host) is kept as the teacher's reason and retried after MLFLOW_RETRY_S; its jobs wait."""
        if not self.settings.teachers_in_registry or self.registry is None:
            return
        now = time.monotonic()
        with self.sessions() as s:
            todo = [(t.id, t.name, t.source) for t in s.scalars(select(Teacher).where(
                Teacher.status == "ready", Teacher.model_version.is_(None)).order_by(Teacher.id))
                if self._registry_wait_until.get(t.id, 0.0) <= now]
        for teacher_id, name, source in todo:
            if self._stop.is_set():
                return
            try:
                with self.sessions() as s:
                    teacher = s.get(Teacher, teacher_id)
                    assert teacher is not None
                    folder = teacher_folder_here(self.settings, teacher)
                version, digest = self.registry.register_teacher(name, folder, source)
            except Exception as exc:
                why = f"not in MLflow's model registry: {type(exc).__name__}: {exc}"
                log.warning("teacher %s: %s; retrying in %.0fs", name, why, MLFLOW_RETRY_S)
                self._registry_wait_until[teacher_id] = time.monotonic() + MLFLOW_RETRY_S
                with self.sessions.begin() as s:
                    s.execute(update(Teacher).where(Teacher.id == teacher_id, Teacher.model_version.is_(None))
                              .values(reason=why[:2000]))
                continue
            self._registry_wait_until.pop(teacher_id, None)
            with self.sessions.begin() as s:  # only if still the same ready, unregistered teacher
                s.execute(update(Teacher).where(Teacher.id == teacher_id, Teacher.status == "ready",
                                                Teacher.model_version.is_(None))
                          .values(model_version=version, model_digest=digest, reason=""))
            log.info("teacher %s registered as %s (sha256 %s)", name, model_uri(name, version), digest)

    # --- progress ----------------------------------------------------------------------------

    def _running_run_id(self, job_id: int) -> str | None:
        """The MLflow run id a running worker recorded in its output folder (so the URL shows early)."""
        try:
            return (self.settings.jobs_dir / str(job_id) / RUN_ID_FILE).read_text().strip() or None
        except OSError:  # not written yet, or the folder is not shared with this machine
            return None

    def _copy_progress(self) -> None:
        with self.sessions() as s:
            jobs = self._mine(s)
            offsets = {j.id: j.log_offset for j in jobs}
            without_run = {j.id for j in jobs if j.mlflow_run_id is None}
        if not offsets:
            return
        # Ask the executor outside any transaction: the database stays unlocked meanwhile.
        reports = self.executor.progress(list(offsets))
        logs = {job_id: self._read_logs(job_id, offsets[job_id]) for job_id in reports}
        # the run the worker reported (any host), else the one recorded in a shared output folder
        run_ids = {job_id: report.get("mlflow_run_id") or (self._running_run_id(job_id) if job_id in without_run
                                                             else None)
                   for job_id, report in reports.items()}
        if not reports:
            return
        with self.sessions.begin() as s:
            for job_id, report in reports.items():
                job = s.get(Job, job_id)
                if job is None or job.status not in IN_FLIGHT_STATUSES or job.claimed_by != self.instance_id:
                    continue
                now = utcnow()
                job.status = "running"  # its worker reported: it has started
                job.progress_step, job.progress_total = report.get("step"), report.get("total")
                job.metrics = {**(job.metrics or {}), **_finite_metrics(report.get("metrics"))}
                job.progress_at = now
                if job.started_at is None:
                    job.started_at = now
                if run_ids.get(job_id) and run_ids[job_id] != job.mlflow_run_id:
                    job.mlflow_run_id = run_ids[job_id]  # as soon as known: a retry reopens it (cluster mode)
                self._store_logs(s, job, offsets[job_id], logs[job_id])

    def _reconcile(self) -> None:
        """In-flight jobs of this dispatcher that the executor does not know: their task was lost."""
        active = self.executor.active() | set(self._unrecorded)
        with self.sessions.begin() as s:
            for job in self._mine(s):
                if job.id not in active:
                    self._lost(s, job, "the executor no longer knows this job")

    # --- dispatch ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        room = self.settings.max_in_flight - len(self.executor.active()) - len(self._unrecorded)
        if room <= 0:
            return
        with self.sessions() as s:
            ready_ids = select(Teacher.id).where(Teacher.status == "ready")
            if self.settings.teachers_in_registry:  # a job gets a reference to the model version, not a path
                ready_ids = ready_ids.where(Teacher.model_version.is_not(None))
            ready = and_(or_(Job.teacher_id.is_(None), Job.teacher_id.in_(ready_ids)),
                         or_(Job.student_teacher_id.is_(None), Job.student_teacher_id.in_(ready_ids)))
            ids = list(s.scalars(select(Job.id).where(Job.status == "queued", ready).order_by(Job.id).limit(room)))
        for job_id in ids:
            if self._stop.is_set() or not self._submit(job_id):
                break

    def _claim(self, job_id: int) -> bool:
        """Compare-and-set queued -> dispatched, committed: only one dispatcher ever wins a job."""
        with self.sessions.begin() as s:
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="dispatched", claimed_by=self.instance_id, attempts=Job.attempts + 1, dispatched_at=utcnow(),
                    started_at=None, log_offset=0)
            )
            return result.rowcount == 1

    def _submit(self, job_id: int) -> bool:
        """Claim, build the spec, submit; False when the executor refused (stop dispatching this round)."""
        if not self._claim(job_id):
            return True
        parent, experiment = self._study_run(job_id)
        with self.sessions.begin() as s:
            job = s.get(Job, job_id, options=[selectinload(Job.teacher), selectinload(Job.dataset)])
            assert job is not None
            job.mlflow_experiment_id = experiment or job.mlflow_experiment_id
            try:
                spec = build_spec(self.settings, job, parent_run_id=parent)
            except (ValueError, OSError) as exc:  # a teacher or dataset folder that is gone
                end_job(s, self.settings, job, "failed", f"cannot build the job: {exc}")
                return True
            add_log(s, job.id, f"dispatched (attempt {job.attempts} of at most {self.settings.max_attempts})")
        try:
            self.executor.submit(spec)
        except Exception as exc:
            log.exception("job %s: the executor refused it", job_id)
            with self.sessions.begin() as s:  # undo the claim: the job waits for the next round
                s.execute(update(Job).where(Job.id == job_id, Job.claimed_by == self.instance_id).values(
                    status="queued", claimed_by=None, attempts=Job.attempts - 1))
                add_log(s, job_id, f"not dispatched, the executor refused it ({type(exc).__name__}: {exc}); "
                                   "it stays queued")
            self.error = f"submit failed: {type(exc).__name__}: {exc}"
            return False
        return True

    # --- MLflow --------------------------------------------------------------------------------

    def _study_run(self, job_id: int) -> tuple[str | None, str | None]:
        """(parent run id, experiment id) for a job; a study's parent run is created on first use."""
        if self.tracking is None or time.monotonic() < self._mlflow_wait_until:
            return None, None
        with self.sessions() as s:
            study = s.scalar(select(Study).join(Job, Job.study_id == Study.id).where(Job.id == job_id))
            if study is not None:
                study_id, name, run_id = study.id, study.name, study.mlflow_run_id
                params = {"teachers": ",".join(study.teachers), "methods": ",".join(study.methods),
                          "seeds": ",".join(map(str, study.seeds)), "student_ratio": study.student_ratio,
                          "dataset": study.dataset.name, **(study.options or {})}
                axes = aggregation.study_axes(study)
        try:
            experiment = self.tracking.experiment_id()
            if study is None or run_id is not None:
                return (run_id if study is not None else None), experiment
            experiment, run_id = self.tracking.start_study_run(study_id, name, params, axes)
            with self.sessions.begin() as s:
                s.execute(update(Study).where(Study.id == study_id, Study.mlflow_run_id.is_(None)).values(
                    mlflow_run_id=run_id, mlflow_experiment_id=experiment))
            return run_id, experiment
        except Exception as exc:
            log.warning("MLflow unavailable (%s); jobs run without a study parent run for %.0fs", exc,
                        MLFLOW_RETRY_S)
            self._mlflow_wait_until = time.monotonic() + MLFLOW_RETRY_S
            return None, None

    def _log_cells(self) -> None:
        """Log ended cells to their study's parent run (again after a recomputation)."""
        if self.tracking is None or time.monotonic() < self._mlflow_wait_until:
            return
        with self.sessions() as s:
            study_ids = set(s.scalars(select(StudyCell.study_id).join(Study).where(
                StudyCell.logged_to_mlflow.is_(False), Study.mlflow_run_id.is_not(None))))
        for study_id in sorted(study_ids):
            try:
                self.log_study_cells(study_id)
            except Exception as exc:
                log.warning("study %s: could not log its cells to MLflow (%s); retrying in %.0fs", study_id, exc,
                            MLFLOW_RETRY_S)
                self._mlflow_wait_until = time.monotonic() + MLFLOW_RETRY_S
                return

    def log_study_cells(self, study_id: int) -> None:
        assert self.tracking is not None
        with self.sessions() as s:
            study = s.get(Study, study_id)
            assert study is not None and study.mlflow_run_id is not None
            cells = [{"teacher": c.teacher, "method": c.method, "axes": json.loads(c.axes or "{}"), "mean": c.mean,
                      "std": c.std, "collapses": c.collapses, "n": c.n} for c in study.cells]
            logged = [c.id for c in study.cells]
            panels = aggregation.study_tables(s, study)
            tables = {"study_table.md": render_panels(panels, "md"), "study_table.csv": render_panels(panels, "csv")}
            complete = len(cells) == aggregation.cells_total(study)
            run_id = study.mlflow_run_id
        self.tracking.log_cells(run_id, cells, tables=tables, complete=complete)
        with self.sessions.begin() as s:
            s.execute(update(StudyCell).where(StudyCell.id.in_(logged)).values(logged_to_mlflow=True))

