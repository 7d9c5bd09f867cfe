"""Jobs: submit a distillation run, read one, list a page, read its log lines.

A list page is one query: the job columns a `JobRead` shows, joined to the names (and the
training status) of its teachers and dataset, with no ORM objects in between; its rows become
`JobRead`s without a second validation (every value comes from a typed column).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Row, Select, func, select
from sqlalchemy.orm import Session, aliased

from server.errors import NotFound
from server.models import Dataset, Job, JobLog, Study, Teacher
from server.schemas import JobCreate, JobRead, LogsRead, Page, Progress
from server.services.checks import (
    check_distill_options,
    check_steps,
    get_dataset,
    get_student_teacher,
    get_usable_teacher,
    options_of,
)
from server.settings import Settings
from server.tracking import run_url


class _Related(NamedTuple):
    """What a JobRead shows of a job's teachers and dataset: names, and the teachers' status."""

    teacher: str | None
    teacher_status: str | None
    student_teacher: str | None
    student_teacher_status: str | None
    output_teacher: str | None
    dataset: str


def _waiting_for(status: str, rel: _Related) -> str | None:
    """A queued job's reason to wait: its teachers still in training."""
    if status != "queued":
        return None
    training = [name for name, state in ((rel.teacher, rel.teacher_status),
                                         (rel.student_teacher, rel.student_teacher_status))
                if name is not None and state == "training"]
    names = list(dict.fromkeys(training))
    if len(names) == 1:
        return f"teacher {names[0]!r} is still training"
    if names:
        return f"teachers {names[0]!r} and {names[1]!r} are still training"
    return None


def _build(job: Any, rel: _Related, settings: Settings) -> JobRead:
    """A JobRead from anything with the Job column attributes (a `Job`, or a row of `_PAGE`)."""
    total = job.progress_total
    fraction = (job.progress_step or 0) / total if total else None
    progress = Progress.model_construct(step=job.progress_step, total=total, fraction=fraction,
                                        updated_at=job.progress_at)
    return JobRead.model_construct(
        id=job.id, kind=job.kind, status=job.status, teacher=rel.teacher, student_teacher=rel.student_teacher,
        output_teacher=rel.output_teacher, dataset=rel.dataset, study_id=job.study_id, method=job.method,
        seed=job.seed, student_ratio=job.student_ratio, steps=job.steps, options=job.options or {},
        attempts=job.attempts, max_attempts=settings.max_attempts, cancel_requested=job.cancel_requested,
        waiting_for=_waiting_for(job.status, rel), progress=progress, metrics=job.metrics or {}, reason=job.reason,
        diverged_step=job.diverged_step, fid=job.fid, fid_metric=job.fid_metric, parameters=job.parameters,
        resumed_from_step=job.resumed_from_step, mlflow_experiment_id=job.mlflow_experiment_id,
        mlflow_run_id=job.mlflow_run_id,
        mlflow_url=run_url(settings.mlflow_ui_url, job.mlflow_experiment_id, job.mlflow_run_id),
        created_at=job.created_at, dispatched_at=job.dispatched_at, started_at=job.started_at,
        finished_at=job.finished_at,
    )


def job_read(job: Job, settings: Settings) -> JobRead:
    """The JobRead of a job object (its relationships load on use, from the session when there)."""
    t, st, ot = job.teacher, job.student_teacher, job.output_teacher
    rel = _Related(t.name if t else None, t.status if t else None, st.name if st else None,
                   st.status if st else None, ot.name if ot else None, job.dataset.name)
    return _build(job, rel, settings)


# --- reading -----------------------------------------------------------------------------------------

_T, _ST, _OT = aliased(Teacher, name="t"), aliased(Teacher, name="st"), aliased(Teacher, name="ot")
_COLUMNS = [c for c in Job.__table__.columns if c.key not in ("teacher_id", "student_teacher_id",
                                                                "output_teacher_id", "dataset_id", "claimed_by",
                                                                "log_offset", "model_dir")]
# Outer joins throughout (dataset_id is never null): the jobs table stays the driving one, so a page
# "ORDER BY id DESC LIMIT n" walks the primary key (or the status index) instead of sorting.
_PAGE: Select[Any] = (
    select(*_COLUMNS, _T.name.label("t_name"), _T.status.label("t_status"), _ST.name.label("st_name"),
           _ST.status.label("st_status"), _OT.name.label("ot_name"), Dataset.name.label("dataset_name"))
    .select_from(Job)
    .outerjoin(_T, Job.teacher_id == _T.id).outerjoin(_ST, Job.student_teacher_id == _ST.id)
    .outerjoin(_OT, Job.output_teacher_id == _OT.id).outerjoin(Dataset, Job.dataset_id == Dataset.id)
)


def _row_read(row: Row[Any], settings: Settings) -> JobRead:
    rel = _Related(row.t_name, row.t_status, row.st_name, row.st_status, row.ot_name, row.dataset_name)
    return _build(row, rel, settings)


def read_job(session: Session, settings: Settings, job_id: int) -> JobRead:
    """One job as the API shows it; NotFound if there is none."""
    row = session.execute(_PAGE.where(Job.id == job_id)).one_or_none()
    if row is None:
        raise NotFound("job", job_id)
    return _row_read(row, settings)


def list_jobs(session: Session, settings: Settings, *, status: str | None = None, study: int | None = None,
              kind: str | None = None, limit: int = 50, offset: int = 0) -> Page[JobRead]:
    """A page of jobs, newest first, with the number of jobs that match (two queries)."""
    where: list[ColumnElement[bool]] = []
    if status is not None:
        where.append(Job.status == status)
    if study is not None:
        if session.get(Study, study) is None:
            raise NotFound("study", study)
        where.append(Job.study_id == study)
    if kind is not None:
        where.append(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.execute(_PAGE.where(*where).order_by(Job.id.desc()).limit(limit).offset(offset))
    return Page[JobRead].model_construct(items=[_row_read(r, settings) for r in rows], total=total, limit=limit,
                                         offset=offset)


def job_logs(session: Session, job_id: int, *, offset: int = 0, limit: int = 1000) -> LogsRead:
    """Lines `offset`.. of the job's log (worker and server), at most `limit`."""
    if session.get(Job, job_id) is None:
        raise NotFound("job", job_id)
    lines = list(session.scalars(select(JobLog.line).where(JobLog.job_id == job_id).order_by(JobLog.id)
                                 .offset(offset).limit(limit)))
    return LogsRead(job_id=job_id, offset=offset, lines=lines, next_offset=offset + len(lines))


def require_job(session: Session, job_id: int) -> None:
    """NotFound unless the job exists."""
    if session.get(Job, job_id) is None:
        raise NotFound("job", job_id)


# --- writing -------------------------------------------------------------------------------------------


def create_job(session: Session, settings: Settings, body: JobCreate) -> Job:
    """Queue one distillation run (flushed, not committed); 422 on a field the database or a limit refuses."""
    check_steps(settings, body.steps)
    teacher = get_usable_teacher(session, body.teacher)
    student_teacher = get_student_teacher(session, body.student_teacher)
    dataset = get_dataset(session, body.dataset)
    check_distill_options(body, dataset, [body.method])
    job = Job(kind="distill", status="queued", teacher=teacher, student_teacher=student_teacher, dataset=dataset,
              method=body.method, seed=body.seed, student_ratio=body.student_ratio, steps=body.steps,
              options=options_of(body))
    session.add(job)
    session.flush()
    return job
