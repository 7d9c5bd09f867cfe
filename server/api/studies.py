"""/api/studies: teachers x methods x seeds in one request, and their Table-6 grid."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from server import aggregation, idempotency
from server.api import (
    READ,
    WRITE,
    Offset,
    RowId,
    SessionDep,
    SettingsDep,
    conflict,
    not_found,
    unique_or_conflict,
    wake_dispatcher,
)
from server.api.jobs import (
    cancel_job_in,
    check_distill_options,
    check_steps,
    get_dataset,
    get_student_teacher,
    get_usable_teacher,
    options_of,
)
from server.models import IN_FLIGHT_STATUSES, JOB_STATUSES, Job, Study, StudyCell
from server.schemas import CellRead, Page, StudyCreate, StudyRead, TableRead, invalid
from server.settings import Settings
from server.tracking import run_url

router = APIRouter(prefix="/api/studies", tags=["studies"])

TABLE_MEDIA_TYPES = {"csv": "text/csv", "md": "text/markdown", "latex": "application/x-latex"}


def study_read(session: Session, study: Study, settings: Settings) -> StudyRead:
    rows = session.execute(select(Job.id, Job.status).where(Job.study_id == study.id).order_by(Job.id)).all()
    counts = {s: 0 for s in JOB_STATUSES} | Counter(status for _, status in rows)
    complete = session.scalar(select(func.count()).select_from(StudyCell).where(StudyCell.study_id == study.id))
    return StudyRead(
        id=study.id, name=study.name, teachers=study.teachers, methods=aggregation.ordered_methods(study),
        seeds=study.seeds, student_ratio=study.student_ratio, dataset=study.dataset.name, options=study.options,
        status=aggregation.study_status(counts),  # type: ignore[arg-type]
        status_counts=counts, jobs=len(rows), job_ids=[i for i, _ in rows], cells_complete=complete or 0,
        cells_total=len(study.teachers) * len(study.methods), mlflow_experiment_id=study.mlflow_experiment_id,
        mlflow_run_id=study.mlflow_run_id,
        mlflow_url=run_url(settings.mlflow_ui_url, study.mlflow_experiment_id, study.mlflow_run_id),
        created_at=study.created_at,
    )


def load_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id, options=[selectinload(Study.dataset)])
    if study is None:
        raise not_found("study", study_id)
    return study


@router.post("", dependencies=WRITE, status_code=201, response_model=StudyRead,
             summary="Create a study: one job per teacher x method x seed")
def create_study(body: StudyCreate, session: SessionDep, settings: SettingsDep, request: Request,
                 idempotency_key: idempotency.IdempotencyKeyHeader = None) -> StudyRead | Response:
    claimed = idempotency.claim(session, settings, "POST /api/studies", idempotency_key, body)
    if isinstance(claimed, Response):
        return claimed
    n_jobs = len(body.teachers) * len(body.methods) * len(body.seeds)
    if n_jobs > settings.max_jobs_per_study:
        raise invalid("seeds", f"seeds: {len(body.teachers)} teachers x {len(body.methods)} methods x "
                               f"{len(body.seeds)} seeds = {n_jobs} jobs, over the limit of "
                               f"{settings.max_jobs_per_study} jobs per study (LIFTPLACE_MAX_JOBS_PER_STUDY)",
                      len(body.seeds))
    check_steps(settings, body.steps)
    teachers = [get_usable_teacher(session, name, ("teachers", i)) for i, name in enumerate(body.teachers)]
    student_teacher = get_student_teacher(session, body.student_teacher)
    dataset = get_dataset(session, body.dataset)
    check_distill_options(body, dataset, list(body.methods))
    if session.scalar(select(Study.id).where(Study.name == body.name)) is not None:
        raise conflict(f"name: a study named {body.name!r} already exists")
    options = {"steps": body.steps, **options_of(body)}
    if student_teacher is not None:
        options["student_teacher"] = student_teacher.name
    study = Study(name=body.name, teachers=list(body.teachers), methods=list(body.methods), seeds=list(body.seeds),
                  student_ratio=body.student_ratio, dataset=dataset, options=options)
    session.add(study)
    for teacher in teachers:
        for method in body.methods:
            for seed in body.seeds:
                session.add(Job(kind="distill", status="queued", teacher=teacher, student_teacher=student_teacher,
                                dataset=dataset, study=study,
                                method=method, seed=seed, student_ratio=body.student_ratio, steps=body.steps,
                                options=options_of(body)))
    with unique_or_conflict(session, f"name: a study named {body.name!r} already exists"):
        session.flush()
        read = study_read(session, study, settings)
        idempotency.record(claimed, 201, read, study.id)
        session.commit()  # the study, all its jobs and the key, or nothing
    wake_dispatcher(request)
    return read


@router.get("", dependencies=READ, response_model=Page[StudyRead], summary="List studies (newest first)")
def list_studies(session: SessionDep, settings: SettingsDep, limit: int = Query(50, ge=1, le=500),
                 offset: Offset = 0) -> Page[StudyRead]:
    total = session.scalar(select(func.count()).select_from(Study)) or 0
    studies = session.scalars(select(Study).options(selectinload(Study.dataset)).order_by(Study.id.desc())
                              .limit(limit).offset(offset))
    return Page[StudyRead](items=[study_read(session, s, settings) for s in studies], total=total, limit=limit,
                           offset=offset)


@router.get("/{study_id}", dependencies=READ, response_model=StudyRead, summary="A study and the status of its jobs")
def get_study(study_id: RowId, session: SessionDep, settings: SettingsDep) -> StudyRead:
    return study_read(session, load_study(session, study_id), settings)


@router.post("/{study_id}/cancel", dependencies=WRITE, response_model=StudyRead,
             summary="Cancel every queued, dispatched or running job of a study")
def cancel_study(study_id: RowId, session: SessionDep, settings: SettingsDep, request: Request) -> StudyRead:
    study = load_study(session, study_id)
    for job in session.scalars(select(Job).where(Job.study_id == study.id,
                                                 Job.status.in_(("queued", *IN_FLIGHT_STATUSES)))):
        cancel_job_in(session, settings, job)
    session.commit()
    wake_dispatcher(request)
    return study_read(session, study, settings)


@router.get(
    "/{study_id}/table",
    dependencies=READ,
    response_model=TableRead,
    summary="The study's Table-6 grid (JSON, or ?format=csv|md|latex)",
    responses={200: {"content": {t: {} for t in TABLE_MEDIA_TYPES.values()}}},
)
def study_table(
    study_id: RowId,
    session: SessionDep,
    format: Literal["json", "csv", "md", "latex"] = Query("json", description="json, csv, md (Markdown) or latex"),
) -> TableRead | Response:
    study = load_study(session, study_id)
    jobs = aggregation.study_jobs(session, study)
    if format != "json":
        table = aggregation.study_table(session, study, jobs)
        return PlainTextResponse(table.render(format), media_type=TABLE_MEDIA_TYPES[format])
    cells = aggregation.study_cells(study, jobs)
    best: dict[str, list[str]] = {}
    for teacher in study.teachers:
        means = {c.method: c.mean for c in cells if c.teacher == teacher and c.mean is not None}
        low = min(means.values(), default=None)
        best[teacher] = [m for m, v in means.items() if v == low] if low is not None else []
    metric = next((c.fid_metric for c in cells if c.fid_metric), None)
    return TableRead(study_id=study.id, metric=metric, teachers=study.teachers,
                     methods=aggregation.ordered_methods(study), cells=[CellRead(**c.as_dict()) for c in cells],
                     best=best)
