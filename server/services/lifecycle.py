"""A job's life after its creation: log lines, its end and what depends on it, cancel and requeue.

`end_job` is the one place a job reaches a terminal state: the dispatcher calls it for outcomes,
the API for a cancelled queued job. It updates the job's teacher (a teacher job) and study cell
in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from liftplace.job_status import IN_FLIGHT_STATUSES, RETRYABLE_STATUSES
from server import aggregation
from server.errors import Conflict
from server.models import Job, JobLog, StudyCell, Teacher, utcnow
from server.settings import Settings


def add_log(session: Session, job_id: int, line: str) -> None:
    """A server line in the job's log (stamped like the worker's)."""
    session.add(JobLog(job_id=job_id, line=f"{time.strftime('%Y-%m-%d %H:%M:%S')} [server] {line}"))


def end_job(s: Session, settings: Settings, job: Job, status: str, reason: str, *,
            model: tuple[str, str] | None = None) -> None:
    """Put a job in a terminal state, with what depends on it: its teacher, its study cell.

    `model`: (version, digest) of the teacher a teacher job registered in MLflow's model registry (cluster
    mode), kept with the teacher. Used by the dispatcher (outcomes) and the API (cancelling a queued job),
    inside their transaction.
    """
    if job.study_id is not None:  # before the job's row changes: see aggregation.lock_study
        aggregation.lock_study(s, job.study_id)
    job.status, job.reason, job.finished_at, job.claimed_by = status, reason, utcnow(), None
    add_log(s, job.id, f"{status}" + (f": {reason}" if reason else ""))
    if job.kind == "teacher" and job.output_teacher is not None:
        teacher = job.output_teacher
        if status == "succeeded":
            teacher.status, teacher.reason = "ready", ""
            teacher.model_dir = job.model_dir or str(settings.jobs_dir / str(job.id) / "model")
            teacher.parameters = job.parameters
            # a teacher trained again is another model: an earlier registration no longer describes it
            teacher.model_version, teacher.model_digest = model if model is not None else (None, None)
        else:
            teacher.status = "failed"
            teacher.reason = f"training job {job.id} {status}" + (f": {reason}" if reason else "")
            s.flush()
            fail_waiting_on(s, settings, [teacher])
    if job.study is not None and job.teacher is not None and job.method is not None:
        s.flush()
        aggregation.update_cell(s, job.study, job.teacher.name, job.method, aggregation.job_axes(job.study, job))


def fail_waiting_on(s: Session, settings: Settings, teachers: Iterable[Teacher]) -> None:
    """Fail the queued jobs that wait for teachers that will not be ready (their training failed)."""
    for teacher in teachers:
        waiting = list(s.scalars(select(Job).where(
            Job.status == "queued", or_(Job.teacher_id == teacher.id, Job.student_teacher_id == teacher.id))))
        for job in waiting:
            end_job(s, settings, job, "failed", f"teacher {teacher.name!r} did not train ({teacher.reason})")


def cancel(session: Session, settings: Settings, job: Job) -> bool:
    """Cancel a queued job at once, or ask a dispatched or running one to stop. False when it has already ended."""
    if job.status == "queued":
        # Compare-and-set, like the dispatcher's claim: if it claimed the job meanwhile, cancel it running.
        won = session.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(status="cancelled"))
        session.refresh(job)
        if won.rowcount == 1:
            end_job(session, settings, job, "cancelled", "cancelled before it started")
            return True
    if job.status in IN_FLIGHT_STATUSES:
        if not job.cancel_requested:
            job.cancel_requested = True
            add_log(session, job.id, "cancel requested")
        return True
    return False


def requeue(session: Session, job: Job) -> None:
    """Queue a failed, diverged or cancelled job again (it resumes from its checkpoint); Conflict otherwise."""
    job_id = job.id
    if job.status not in RETRYABLE_STATUSES:
        raise Conflict(f"job {job_id} is {job.status}; only {', '.join(RETRYABLE_STATUSES)} jobs can be retried")
    for teacher in (job.teacher, job.student_teacher):
        if teacher is not None and teacher.status == "failed":
            raise Conflict(f"job {job_id}: its teacher {teacher.name!r} failed to train; retry the teacher's "
                           "job first")
    # Same job, same output folder: the worker resumes from its checkpoint and reopens its MLflow run.
    job.status, job.reason, job.attempts, job.cancel_requested = "queued", "", 0, False
    job.finished_at, job.diverged_step, job.claimed_by = None, None, None
    if job.kind == "teacher" and job.output_teacher is not None:
        job.output_teacher.status, job.output_teacher.reason = "training", ""
    if job.study is not None and job.teacher is not None:
        # The cell is no longer complete; it is recomputed when this seed ends again.
        axes = aggregation.axes_text(aggregation.job_axes(job.study, job))
        session.execute(delete(StudyCell).where(
            StudyCell.study_id == job.study_id, StudyCell.teacher == job.teacher.name, StudyCell.method == job.method,
            StudyCell.axes == axes))
    add_log(session, job.id, "retry requested: queued again (it resumes from its checkpoint)")
