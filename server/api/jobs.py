"""/api/jobs: submit a distillation run, list and read jobs, cancel, retry, logs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from liftplace.methods import get_method
from server import idempotency
from server.api import (
    MAX_ROW_ID,
    READ,
    WRITE,
    Offset,
    RowId,
    SessionDep,
    SettingsDep,
    conflict,
    not_found,
    wake_dispatcher,
)
from server.dispatcher import add_log, end_job
from server.models import IN_FLIGHT_STATUSES, Dataset, Job, JobLog, Study, StudyCell, Teacher
from server.schemas import (
    DistillOptions,
    JobCreate,
    JobRead,
    JobStatus,
    LogsRead,
    Page,
    Progress,
    TrainOptions,
    invalid,
)
from server.settings import Settings
from server.tracking import run_url

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

# Job options stored as such (the other request fields have their own columns).
OPTION_FIELDS: tuple[str, ...] = tuple(f for f in DistillOptions.model_fields if f not in ("steps", "dataset"))
TRAIN_OPTION_FIELDS: tuple[str, ...] = tuple(f for f in TrainOptions.model_fields if f not in ("steps", "dataset"))
RETRYABLE: tuple[str, ...] = ("failed", "diverged", "cancelled")


# --- shared with studies and teachers ------------------------------------------------------------


def check_steps(settings: Settings, steps: int) -> None:
    if steps > settings.max_steps:
        raise invalid("steps", f"steps: {steps} is over the limit of {settings.max_steps} steps per job "
                               "(LIFTPLACE_MAX_STEPS)", steps)


def get_dataset(session: Session, name: str, field: str = "dataset") -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        known = ", ".join(session.scalars(select(Dataset.name).order_by(Dataset.name)))
        raise invalid(field, f"{field}: unknown dataset {name!r}; registered: {known}", name)
    return dataset


def get_usable_teacher(session: Session, name: str, field: str | tuple[str | int, ...] = "teacher") -> Teacher:
    """A registered teacher that is ready or still training (jobs wait for it); 422 otherwise."""
    label = field if isinstance(field, str) else field[0]
    teacher = session.scalar(select(Teacher).where(Teacher.name == name))
    if teacher is None:
        known = ", ".join(session.scalars(select(Teacher.name).order_by(Teacher.name))) or "none yet"
        raise invalid(field, f"{label}: unknown teacher {name!r}; registered: {known}", name)
    if teacher.status == "failed":
        raise invalid(field, f"{label}: teacher {name!r} failed to train ({teacher.reason}); retry its training "
                             "job first", name)
    return teacher


def get_student_teacher(session: Session, name: str | None) -> Teacher | None:
    """The teacher a student is pruned from when it is not the distilling one (None: that one)."""
    return None if name is None else get_usable_teacher(session, name, "student_teacher")


def image_size(dataset: Dataset, resolution: int | None) -> int:
    return resolution or dataset.resolution or 8


def check_distill_options(body: DistillOptions, dataset: Dataset, methods: list[str]) -> None:
    """Checks that need the dataset: image size, PLACE group size."""
    size = image_size(dataset, body.resolution)
    if dataset.kind == "embedded" and size % 8 != 0:
        raise invalid("resolution", f"resolution: the digits data needs a multiple of 8, got {size}", size)
    if body.group_size is not None and any(get_method(m).uses_place for m in methods):
        positions = size * size
        if positions % body.group_size != 0:
            raise invalid("group_size", f"group_size: {body.group_size} does not divide the {positions} positions of "
                                        f"a {size}x{size} image (PLACE groups must tile it)", body.group_size)


def options_of(body: DistillOptions) -> dict[str, Any]:
    return body.model_dump(include=set(OPTION_FIELDS))


# --- reading ---------------------------------------------------------------------------------------


def job_read(job: Job, settings: Settings) -> JobRead:
    total = job.progress_total
    fraction = (job.progress_step or 0) / total if total else None
    waiting_for = None
    if job.status == "queued":
        training = [t.name for t in (job.teacher, job.student_teacher) if t is not None and t.status == "training"]
        names = list(dict.fromkeys(training))
        if len(names) == 1:
            waiting_for = f"teacher {names[0]!r} is still training"
        elif names:
            waiting_for = f"teachers {names[0]!r} and {names[1]!r} are still training"
    return JobRead(
        id=job.id, kind=job.kind, status=job.status,  # type: ignore[arg-type]
        teacher=job.teacher.name if job.teacher else None,
        student_teacher=job.student_teacher.name if job.student_teacher else None,
        output_teacher=job.output_teacher.name if job.output_teacher else None,
        dataset=job.dataset.name, study_id=job.study_id, method=job.method, seed=job.seed,
        student_ratio=job.student_ratio, steps=job.steps, options=job.options or {}, attempts=job.attempts,
        max_attempts=settings.max_attempts, cancel_requested=job.cancel_requested, waiting_for=waiting_for,
        progress=Progress(step=job.progress_step, total=total, fraction=fraction, updated_at=job.progress_at),
        metrics=job.metrics or {}, reason=job.reason, diverged_step=job.diverged_step, fid=job.fid,
        fid_metric=job.fid_metric, parameters=job.parameters, resumed_from_step=job.resumed_from_step,
        mlflow_experiment_id=job.mlflow_experiment_id, mlflow_run_id=job.mlflow_run_id,
        mlflow_url=run_url(settings.mlflow_ui_url, job.mlflow_experiment_id, job.mlflow_run_id),
        created_at=job.created_at, dispatched_at=job.dispatched_at, started_at=job.started_at,
        finished_at=job.finished_at,
    )


_LOAD = (selectinload(Job.teacher), selectinload(Job.student_teacher), selectinload(Job.output_teacher),
         selectinload(Job.dataset))


def load_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, options=_LOAD)
    if job is None:
        raise not_found("job", job_id)
    return job


# --- routes ----------------------------------------------------------------------------------------


@router.post("", dependencies=WRITE, status_code=201, response_model=JobRead, summary="Submit a distillation run")
def create_job(body: JobCreate, session: SessionDep, settings: SettingsDep, request: Request,
               idempotency_key: idempotency.IdempotencyKeyHeader = None) -> JobRead | Response:
    claimed = idempotency.claim(session, settings, "POST /api/jobs", idempotency_key, body)
    if isinstance(claimed, Response):
        return claimed
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
    read = job_read(job, settings)
    idempotency.record(claimed, 201, read, job.id)
    session.commit()
    wake_dispatcher(request)
    return read


@router.get("", dependencies=READ, response_model=Page[JobRead], summary="List jobs (newest first)")
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    study: int | None = Query(None, ge=1, le=MAX_ROW_ID, description="only the jobs of this study"),
    kind: str | None = Query(None, pattern="^(distill|teacher)$"),
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> Page[JobRead]:
    where = []
    if status is not None:
        where.append(Job.status == status)
    if study is not None:
        if session.get(Study, study) is None:
            raise not_found("study", study)
        where.append(Job.study_id == study)
    if kind is not None:
        where.append(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    jobs = session.scalars(select(Job).where(*where).options(*_LOAD).order_by(Job.id.desc()).limit(limit)
                           .offset(offset))
    return Page[JobRead](items=[job_read(j, settings) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", dependencies=READ, response_model=JobRead,
            summary="A job: status, progress, metrics, MLflow run")
def get_job(job_id: RowId, session: SessionDep, settings: SettingsDep) -> JobRead:
    return job_read(load_job(session, job_id), settings)


def cancel_job_in(session: Session, settings: Settings, job: Job) -> bool:
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


@router.post("/{job_id}/cancel", dependencies=WRITE, response_model=JobRead, summary="Cancel a queued or running job")
def cancel_job(job_id: RowId, session: SessionDep, settings: SettingsDep, request: Request) -> JobRead:
    job = load_job(session, job_id)
    if not cancel_job_in(session, settings, job):
        raise conflict(f"job {job_id} has already ended ({job.status}); nothing to cancel")
    session.commit()
    wake_dispatcher(request)
    return job_read(job, settings)


@router.post("/{job_id}/retry", dependencies=WRITE, response_model=JobRead,
             summary="Queue a failed, diverged or cancelled job again")
def retry_job(job_id: RowId, session: SessionDep, settings: SettingsDep, request: Request) -> JobRead:
    job = load_job(session, job_id)
    if job.status not in RETRYABLE:
        raise conflict(f"job {job_id} is {job.status}; only {', '.join(RETRYABLE)} jobs can be retried")
    for teacher in (job.teacher, job.student_teacher):
        if teacher is not None and teacher.status == "failed":
            raise conflict(f"job {job_id}: its teacher {teacher.name!r} failed to train; retry the teacher's "
                           "job first")
    # Same job, same output folder: the worker resumes from its checkpoint and reopens its MLflow run.
    job.status, job.reason, job.attempts, job.cancel_requested = "queued", "", 0, False
    job.finished_at, job.diverged_step, job.claimed_by = None, None, None
    if job.kind == "teacher" and job.output_teacher is not None:
        job.output_teacher.status, job.output_teacher.reason = "training", ""
    if job.study_id is not None and job.teacher is not None:
        # The cell is no longer complete; it is recomputed when this seed ends again.
        session.execute(delete(StudyCell).where(StudyCell.study_id == job.study_id,
                                                StudyCell.teacher == job.teacher.name, StudyCell.method == job.method))
    add_log(session, job.id, "retry requested: queued again (it resumes from its checkpoint)")
    session.commit()
    wake_dispatcher(request)
    return job_read(job, settings)


@router.get("/{job_id}/logs", dependencies=READ, response_model=LogsRead,
            summary="A job's log lines (worker and server)")
def job_logs(job_id: RowId, session: SessionDep, offset: Offset = 0,
             limit: int = Query(1000, ge=1, le=10_000)) -> LogsRead:
    if session.get(Job, job_id) is None:
        raise not_found("job", job_id)
    lines = list(session.scalars(select(JobLog.line).where(JobLog.job_id == job_id).order_by(JobLog.id)
                                 .offset(offset).limit(limit)))
    return LogsRead(job_id=job_id, offset=offset, lines=lines, next_offset=offset + len(lines))

