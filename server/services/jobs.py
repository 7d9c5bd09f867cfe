"""Jobs: submit a distillation run, read one, list a page, read its log lines.

A job is read by one query: the job columns a `JobRead` shows, joined to the names (and the
training status) of its teachers and dataset (`_ROWS`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, func, insert, select
from sqlalchemy.orm import Session

from server.errors import Conflict, NotFound
from server.models import Dataset, Job, JobLog, Revision, Study, Teacher
from server.page_cache import Encoded, PageCache
from server.schemas import JobCreate, JobRead, LogsRead, Page
from server.services import lifecycle
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

# The rows of jobs as the API shows them, read with Core statements (no ORM objects in between):
# the job columns a JobRead shows as they are (same names), those it is built from, and the names
# (and training status) of its teachers and dataset.
_JOBS = Job.__table__
_SHOWN = [c for c in _JOBS.columns if c.key in JobRead.model_fields]
_PROGRESS = [_JOBS.c.progress_step, _JOBS.c.progress_total, _JOBS.c.progress_at]
_T, _ST, _OT = (Teacher.__table__.alias(name) for name in ("t", "st", "ot"))
_DATASETS = Dataset.__table__
_ROWS: Select[Any] = (
    select(*_SHOWN, *_PROGRESS, _T.c.name.label("teacher"), _T.c.status.label("teacher_status"),
           _ST.c.name.label("student_teacher"), _ST.c.status.label("student_teacher_status"),
           _OT.c.name.label("output_teacher"), _DATASETS.c.name.label("dataset"))
    .select_from(_JOBS
                 .outerjoin(_T, _JOBS.c.teacher_id == _T.c.id).outerjoin(_ST, _JOBS.c.student_teacher_id == _ST.c.id)
                 .outerjoin(_OT, _JOBS.c.output_teacher_id == _OT.c.id)
                 .outerjoin(_DATASETS, _JOBS.c.dataset_id == _DATASETS.c.id))
)


def _waiting_for(status: str, teachers: tuple[tuple[str | None, str | None], ...]) -> str | None:
    """A queued job's reason to wait: its teachers (name, status) still in training."""
    if status != "queued":
        return None
    names = list(dict.fromkeys(name for name, state in teachers if name is not None and state == "training"))
    if len(names) == 1:
        return f"teacher {names[0]!r} is still training"
    if names:
        return f"teachers {names[0]!r} and {names[1]!r} are still training"
    return None


def _fields(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """JobRead's fields from a row of `_ROWS` (changed in place and returned)."""
    step, total = row.pop("progress_step"), row.pop("progress_total")
    row["progress"] = {"step": step, "total": total, "fraction": (step or 0) / total if total else None,
                       "updated_at": row.pop("progress_at")}
    row["waiting_for"] = _waiting_for(row["status"], ((row["teacher"], row.pop("teacher_status")),
                                                      (row["student_teacher"], row.pop("student_teacher_status"))))
    row["options"], row["metrics"] = row["options"] or {}, row["metrics"] or {}
    row["max_attempts"] = settings.max_attempts
    row["mlflow_url"] = run_url(settings.mlflow_ui_url, row["mlflow_experiment_id"], row["mlflow_run_id"])
    return row


def read_job(session: Session, settings: Settings, job_id: int) -> JobRead:
    """One job as the API shows it; NotFound if there is none."""
    row = session.execute(_ROWS.where(_JOBS.c.id == job_id)).mappings().one_or_none()
    if row is None:
        raise NotFound("job", job_id)
    return JobRead.model_validate(_fields(dict(row), settings))


def list_jobs(session: Session, settings: Settings, *, status: str | None = None, study: int | None = None,
              kind: str | None = None, limit: int = 50, offset: int = 0) -> Page[JobRead]:
    """A page of jobs, newest first, with the number of jobs that match: a count and one page query.

    The page's ids are found first on the jobs table alone (its primary key, or the status index),
    and only those rows are joined to their teachers and dataset: a deep offset skips index
    entries, not joined rows.
    """
    where: list[ColumnElement[bool]] = []
    if status is not None:
        where.append(_JOBS.c.status == status)
    if study is not None:
        if session.get(Study, study) is None:
            raise NotFound("study", study)
        where.append(_JOBS.c.study_id == study)
    if kind is not None:
        where.append(_JOBS.c.kind == kind)
    total = session.scalar(select(func.count()).select_from(_JOBS).where(*where)) or 0
    page = select(_JOBS.c.id).where(*where).order_by(_JOBS.c.id.desc()).limit(limit).offset(offset)
    rows = session.execute(_ROWS.where(_JOBS.c.id.in_(page)).order_by(_JOBS.c.id.desc())).mappings().all()
    # One validation for the whole page (in pydantic's core), not one per row.
    return Page[JobRead].model_validate({"items": [_fields(dict(r), settings) for r in rows], "total": total,
                                         "limit": limit, "offset": offset})


def list_jobs_encoded(session: Session, settings: Settings, cache: PageCache, *, status: str | None = None,
                      study: int | None = None, kind: str | None = None, limit: int = 50,
                      offset: int = 0) -> Encoded:
    """`list_jobs`'s answer as JSON bytes, from `cache` when the database is still at the revision it
    was built at (one primary-key sum), else built, encoded once and kept.

    The revision is read first, in the transaction that then reads the page. On SQLite that
    transaction is one snapshot: the page is exactly the revision's. On PostgreSQL (read committed:
    a snapshot per statement) the page is at least as new as the revision: a write committed in
    between bumped the revision, so every read that starts after it reads a newer revision and
    misses this entry; only reads that raced that write may get it, and they get the newer rows.
    A revision never pairs with an older page. Nothing in a page depends on the clock, and the
    settings it shows are part of the key.
    """
    revision = session.scalar(select(func.sum(Revision.value)))
    key = (status, study, kind, limit, offset, settings.max_attempts, settings.mlflow_ui_url)
    if revision is not None and (hit := cache.get(revision, key)) is not None:
        return hit
    page = list_jobs(session, settings, status=status, study=study, kind=kind, limit=limit, offset=offset)
    encoded = Encoded.of(page.__pydantic_serializer__.to_json(page))
    if revision is not None:  # None: no revisions table rows (a database not migrated by us): never cached
        cache.put(revision, key, encoded)
    return encoded


def job_logs(session: Session, job_id: int, *, offset: int = 0, limit: int = 1000) -> LogsRead:
    """Lines `offset`.. of the job's log (worker and server), at most `limit`."""
    require_job(session, job_id)
    lines = list(session.scalars(select(JobLog.line).where(JobLog.job_id == job_id).order_by(JobLog.id)
                                 .offset(offset).limit(limit)))
    return LogsRead(job_id=job_id, offset=offset, lines=lines, next_offset=offset + len(lines))


def require_job(session: Session, job_id: int) -> Job:
    """The job; NotFound unless it exists."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


# --- writing -------------------------------------------------------------------------------------------


def create_job(session: Session, settings: Settings, body: JobCreate) -> JobRead:
    """Queue one distillation run (not committed); 422 on a field the database or a limit refuses.

    The job is one INSERT ... RETURNING (a Core statement: no ORM unit of work), and the answer is
    built from the returned row and the names already at hand (no second read).
    """
    check_steps(settings, body.steps)
    teacher = get_usable_teacher(session, body.teacher)
    student_teacher = get_student_teacher(session, body.student_teacher)
    dataset = get_dataset(session, body.dataset)
    check_distill_options(body, dataset, [body.method])
    insert_job = insert(_JOBS).values(
        kind="distill", status="queued", teacher_id=teacher.id,
        student_teacher_id=student_teacher.id if student_teacher else None, dataset_id=dataset.id,
        method=body.method, seed=body.seed, student_ratio=body.student_ratio, steps=body.steps,
        options=options_of(body))
    row = dict(session.execute(insert_job.returning(*_SHOWN, *_PROGRESS)).mappings().one())
    row.update(teacher=teacher.name, teacher_status=teacher.status, output_teacher=None, dataset=dataset.name,
               student_teacher=student_teacher.name if student_teacher else None,
               student_teacher_status=student_teacher.status if student_teacher else None)
    return JobRead.model_validate(_fields(row, settings))


def load_job(session: Session, job_id: int) -> Job:
    """The job (its relationships load on use); NotFound if there is none."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


def cancel_job(session: Session, settings: Settings, job_id: int) -> JobRead:
    """Cancel a queued job, or ask a dispatched or running one to stop (lifecycle.cancel); Conflict when ended."""
    job = load_job(session, job_id)
    if not lifecycle.cancel(session, settings, job):
        raise Conflict(f"job {job_id} has already ended ({job.status}); nothing to cancel")
    session.flush()
    return read_job(session, settings, job_id)


def retry_job(session: Session, settings: Settings, job_id: int) -> JobRead:
    """Queue a failed, diverged or cancelled job again (lifecycle.requeue)."""
    lifecycle.requeue(session, load_job(session, job_id))
    session.flush()
    return read_job(session, settings, job_id)
