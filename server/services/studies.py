"""Studies: teachers x methods x seeds in one request, their status, their Table-6 grid."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from server import aggregation
from server.errors import Conflict, NotFound
from server.models import IN_FLIGHT_STATUSES, JOB_STATUSES, Job, Study, StudyCell
from server.schemas import CellRead, Page, StudyCreate, StudyRead, TableRead, invalid
from server.services.checks import (
    check_distill_options,
    check_steps,
    get_dataset,
    get_student_teacher,
    get_usable_teacher,
    options_of,
    unique_or_conflict,
)
from server.services.lifecycle import cancel
from server.settings import Settings
from server.tracking import run_url


def study_reads(session: Session, studies: list[Study], settings: Settings) -> list[StudyRead]:
    """The studies with their jobs' status counts and complete cells: two queries for all of them."""
    if not studies:
        return []
    ids = [s.id for s in studies]
    jobs: dict[int, list[tuple[int, str]]] = {i: [] for i in ids}
    for study_id, job_id, status in session.execute(select(Job.study_id, Job.id, Job.status)
                                                    .where(Job.study_id.in_(ids)).order_by(Job.id)):
        jobs[study_id].append((job_id, status))
    complete = dict(session.execute(select(StudyCell.study_id, func.count()).where(StudyCell.study_id.in_(ids))
                                    .group_by(StudyCell.study_id)).all())
    return [_study_read(s, jobs[s.id], complete.get(s.id, 0), settings) for s in studies]


def study_read(session: Session, study: Study, settings: Settings) -> StudyRead:
    return study_reads(session, [study], settings)[0]


def _study_read(study: Study, rows: list[tuple[int, str]], complete: int, settings: Settings) -> StudyRead:
    counts = {s: 0 for s in JOB_STATUSES} | Counter(status for _, status in rows)
    return StudyRead(
        id=study.id, name=study.name, teachers=study.teachers, methods=aggregation.ordered_methods(study),
        seeds=study.seeds, student_ratio=study.student_ratio, dataset=study.dataset.name, options=study.options,
        collapse_fid=study.collapse_fid, collapse_threshold=aggregation.study_threshold(study),
        status=aggregation.study_status(counts),  # type: ignore[arg-type]
        status_counts=counts, jobs=len(rows), job_ids=[i for i, _ in rows], cells_complete=complete,
        cells_total=len(study.teachers) * len(study.methods), mlflow_experiment_id=study.mlflow_experiment_id,
        mlflow_run_id=study.mlflow_run_id,
        mlflow_url=run_url(settings.mlflow_ui_url, study.mlflow_experiment_id, study.mlflow_run_id),
        created_at=study.created_at,
    )


def load_study(session: Session, study_id: int) -> Study:
    """The study (with its dataset); NotFound if there is none."""
    study = session.get(Study, study_id, options=[selectinload(Study.dataset)])
    if study is None:
        raise NotFound("study", study_id)
    return study


def _check_size(settings: Settings, body: StudyCreate) -> None:
    n_jobs = len(body.teachers) * len(body.methods) * len(body.seeds)
    if n_jobs > settings.max_jobs_per_study:
        raise invalid("seeds", f"seeds: {len(body.teachers)} teachers x {len(body.methods)} methods x "
                               f"{len(body.seeds)} seeds = {n_jobs} jobs, over the limit of "
                               f"{settings.max_jobs_per_study} jobs per study (LIFTPLACE_MAX_JOBS_PER_STUDY)",
                      len(body.seeds))


def create_study(session: Session, settings: Settings, body: StudyCreate) -> StudyRead:
    """The study and one queued job per teacher x method x seed (flushed, not committed)."""
    _check_size(settings, body)
    check_steps(settings, body.steps)
    teachers = [get_usable_teacher(session, name, ("teachers", i)) for i, name in enumerate(body.teachers)]
    student_teacher = get_student_teacher(session, body.student_teacher)
    dataset = get_dataset(session, body.dataset)
    check_distill_options(body, dataset, list(body.methods))
    taken = f"name: a study named {body.name!r} already exists"
    if session.scalar(select(Study.id).where(Study.name == body.name)) is not None:
        raise Conflict(taken)
    options = {"steps": body.steps, **options_of(body)}
    if student_teacher is not None:
        options["student_teacher"] = student_teacher.name
    study = Study(name=body.name, teachers=list(body.teachers), methods=list(body.methods), seeds=list(body.seeds),
                  student_ratio=body.student_ratio, dataset=dataset, options=options, collapse_fid=body.collapse_fid)
    session.add(study)
    for teacher in teachers:
        for method in body.methods:
            for seed in body.seeds:
                session.add(Job(kind="distill", status="queued", teacher=teacher, student_teacher=student_teacher,
                                dataset=dataset, study=study,
                                method=method, seed=seed, student_ratio=body.student_ratio, steps=body.steps,
                                options=options_of(body)))
    with unique_or_conflict(session, taken):
        session.flush()
    return study_read(session, study, settings)


def list_studies(session: Session, settings: Settings, *, limit: int = 50, offset: int = 0) -> Page[StudyRead]:
    """A page of studies, newest first, with the number of studies."""
    total = session.scalar(select(func.count()).select_from(Study)) or 0
    studies = list(session.scalars(select(Study).options(selectinload(Study.dataset)).order_by(Study.id.desc())
                                   .limit(limit).offset(offset)))
    return Page[StudyRead](items=study_reads(session, studies, settings), total=total, limit=limit, offset=offset)


def cancel_study(session: Session, settings: Settings, study_id: int) -> StudyRead:
    """Cancel every queued, dispatched or running job of the study (flushed, not committed)."""
    study = load_study(session, study_id)
    live = ("queued", *IN_FLIGHT_STATUSES)
    for job in session.scalars(select(Job).where(Job.study_id == study.id, Job.status.in_(live))):
        cancel(session, settings, job)
    session.flush()
    return study_read(session, study, settings)


def table_read(session: Session, study: Study, jobs: list[Job] | None = None) -> TableRead:
    """The study's Table-6 grid: one cell per teacher x method, and per teacher the best mean(s)."""
    jobs = aggregation.study_jobs(session, study) if jobs is None else jobs
    cells = aggregation.study_cells(study, jobs)
    best: dict[str, list[str]] = {}
    for teacher in study.teachers:
        means = {c.method: c.mean for c in cells if c.teacher == teacher and c.mean is not None}
        low = min(means.values(), default=None)
        best[teacher] = [m for m, v in means.items() if v == low] if low is not None else []
    metric = next((c.fid_metric for c in cells if c.fid_metric), None)
    return TableRead(study_id=study.id, metric=metric, teachers=study.teachers,
                     methods=aggregation.ordered_methods(study), cells=[CellRead(**c.as_dict()) for c in cells],
                     best=best, collapse_threshold=aggregation.study_threshold(study))


def read_study(session: Session, settings: Settings, study_id: int) -> StudyRead:
    return study_read(session, load_study(session, study_id), settings)


def read_table(session: Session, study_id: int) -> TableRead:
    return table_read(session, load_study(session, study_id))


def table_text(session: Session, study_id: int, format: str) -> str:
    """The study's Table-6 grid as csv, md or latex text."""
    study = load_study(session, study_id)
    return aggregation.study_table(session, study, aggregation.study_jobs(session, study)).render(format)
