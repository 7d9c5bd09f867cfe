"""Studies: teachers x methods x seeds (x axis values) in one request, their status, their Table-6 grid."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from liftplace.job_status import IN_FLIGHT_STATUSES, JOB_STATUSES
from liftplace.methods import get_method
from liftplace.tables import render_panels
from server import aggregation
from server.errors import Conflict, NotFound
from server.models import Dataset, Job, Study, StudyCell
from server.schemas import CellRead, Page, StudyCreate, StudyRead, TableRead, invalid
from server.services.checks import (
    check_distill_options,
    check_group_size,
    check_steps,
    get_dataset,
    get_student_teacher,
    get_usable_teacher,
    image_size,
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
    complete: dict[int, int] = {}
    unlogged: dict[int, int] = {}
    for study_id, logged, n in session.execute(
            select(StudyCell.study_id, StudyCell.logged_to_mlflow, func.count()).where(StudyCell.study_id.in_(ids))
            .group_by(StudyCell.study_id, StudyCell.logged_to_mlflow)):
        complete[study_id] = complete.get(study_id, 0) + n
        if not logged:
            unlogged[study_id] = n
    return [_study_read(s, jobs[s.id], complete.get(s.id, 0), unlogged.get(s.id, 0), settings) for s in studies]


def study_read(session: Session, study: Study, settings: Settings) -> StudyRead:
    return study_reads(session, [study], settings)[0]


def _study_read(study: Study, rows: list[tuple[int, str]], complete: int, unlogged: int,
                settings: Settings) -> StudyRead:
    counts = {s: 0 for s in JOB_STATUSES} | Counter(status for _, status in rows)
    return StudyRead(
        id=study.id, name=study.name, teachers=study.teachers, methods=aggregation.ordered_methods(study),
        axes=aggregation.study_axes(study), seeds=study.seeds, student_ratio=study.student_ratio,
        dataset=study.dataset.name, options=study.options,
        collapse_fid=study.collapse_fid, collapse_threshold=aggregation.study_threshold(study),
        status=aggregation.study_status(counts),  # type: ignore[arg-type]
        status_counts=counts, jobs=len(rows), job_ids=[i for i, _ in rows], cells_complete=complete,
        cells_total=aggregation.cells_total(study), mlflow_experiment_id=study.mlflow_experiment_id,
        mlflow_run_id=study.mlflow_run_id, mlflow_synced=study.mlflow_run_id is not None and unlogged == 0,
        mlflow_url=run_url(settings.mlflow_ui_url, study.mlflow_experiment_id, study.mlflow_run_id),
        created_at=study.created_at,
    )


def load_study(session: Session, study_id: int) -> Study:
    """The study (with its dataset); NotFound if there is none."""
    study = session.get(Study, study_id, options=[selectinload(Study.dataset)])
    if study is None:
        raise NotFound("study", study_id)
    return study


def method_combos(body: StudyCreate, method: str) -> list[dict[str, Any]]:
    """The axis values of `method`'s jobs: the product of the axes it uses ([{}] without any)."""
    axes = {a: v for a, v in body.axis_values().items() if get_method(method).uses_option(a)}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _check_size(settings: Settings, body: StudyCreate) -> None:
    per_seed = sum(len(method_combos(body, m)) for m in body.methods)
    n_jobs = len(body.teachers) * per_seed * len(body.seeds)
    if n_jobs <= settings.max_jobs_per_study:
        return
    limit = f"over the limit of {settings.max_jobs_per_study} jobs per study (LIFTPLACE_MAX_JOBS_PER_STUDY)"
    axes = body.axis_values()
    if not axes:
        raise invalid("seeds", f"seeds: {len(body.teachers)} teachers x {len(body.methods)} methods x "
                               f"{len(body.seeds)} seeds = {n_jobs} jobs, {limit}", len(body.seeds))
    # With axes, the 422 names the largest axis: the one to shorten first.
    name = max(axes, key=lambda a: len(axes[a]))
    sizes = " x ".join(f"{len(v)} {a}" for a, v in axes.items())
    raise invalid(("axes", name), f"axes.{name}: {len(body.teachers)} teachers x {len(body.seeds)} seeds x "
                                  f"{per_seed} method and axis combinations (axes: {sizes}) = {n_jobs} jobs, {limit}",
                  axes[name])


def _check_axes(settings: Settings, body: StudyCreate, dataset: Dataset) -> None:
    """The axis values that need the runtime limits or the dataset, named `axes.<option>.<index>`."""
    axes = body.axis_values()
    for i, steps in enumerate(axes.get("steps", [])):
        check_steps(settings, steps, ("axes", "steps", i))
    if any(get_method(m).uses_place for m in body.methods):
        size = image_size(dataset, body.resolution)
        for i, k in enumerate(axes.get("group_size", [])):
            check_group_size(k, size, ("axes", "group_size", i))


def _job_values(body: StudyCreate, combo: dict[str, Any]) -> tuple[int, float, dict[str, Any]]:
    """(steps, student ratio, options) of the jobs of one axis combination: the study's, overridden by it.

    An axis the combination leaves out (its method ignores it) takes the option's default, so that a method
    is never handed a value it refuses (e.g. an ablation for OutKD)."""
    options = options_of(body)
    for axis in body.axis_values():
        if axis in options:
            options[axis] = combo.get(axis, StudyCreate.model_fields[axis].default)
    return combo.get("steps", body.steps), combo.get("student_ratio", body.student_ratio), options


def create_study(session: Session, settings: Settings, body: StudyCreate) -> StudyRead:
    """The study and one queued job per teacher x method x seed x axis values (flushed, not committed)."""
    _check_size(settings, body)
    check_steps(settings, body.steps)
    teachers = [get_usable_teacher(session, name, ("teachers", i)) for i, name in enumerate(body.teachers)]
    student_teacher = get_student_teacher(session, body.student_teacher)
    dataset = get_dataset(session, body.dataset)
    check_distill_options(body, dataset, list(body.methods))
    _check_axes(settings, body, dataset)
    taken = f"name: a study named {body.name!r} already exists"
    if session.scalar(select(Study.id).where(Study.name == body.name)) is not None:
        raise Conflict(taken)
    options = {"steps": body.steps, **options_of(body)}
    if student_teacher is not None:
        options["student_teacher"] = student_teacher.name
    study = Study(name=body.name, teachers=list(body.teachers), methods=list(body.methods), seeds=list(body.seeds),
                  student_ratio=body.student_ratio, dataset=dataset, options=options, collapse_fid=body.collapse_fid,
                  axes=body.axis_values())
    session.add(study)
    for teacher in teachers:
        for method in body.methods:
            for combo in method_combos(body, method):
                steps, ratio, job_options = _job_values(body, combo)
                for seed in body.seeds:
                    session.add(Job(kind="distill", status="queued", teacher=teacher, student_teacher=student_teacher,
                                    dataset=dataset, study=study, method=method, seed=seed, student_ratio=ratio,
                                    steps=steps, options=dict(job_options)))
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
    """The study's Table-6 grid: one cell per teacher x method (x axis values), and per teacher the method(s)
    of the best mean(s)."""
    jobs = aggregation.study_jobs(session, study) if jobs is None else jobs
    cells = aggregation.study_cells(study, jobs)
    best: dict[str, list[str]] = {}
    for teacher in study.teachers:
        means = {c.method: c.mean for c in cells if c.teacher == teacher and c.mean is not None}
        low = min(means.values(), default=None)
        best[teacher] = [m for m, v in means.items() if v == low] if low is not None else []
    if study.axes:  # several cells per method: the best cells' methods
        lows = {t: min((c.mean for c in cells if c.teacher == t and c.mean is not None), default=None)
                for t in study.teachers}
        best = {t: list(dict.fromkeys(c.method for c in cells if c.teacher == t and c.mean is not None
                                      and c.mean == lows[t])) for t in study.teachers}
    metric = next((c.fid_metric for c in cells if c.fid_metric), None)
    return TableRead(study_id=study.id, metric=metric, teachers=study.teachers, axes=aggregation.study_axes(study),
                     methods=aggregation.ordered_methods(study), cells=[CellRead(**c.as_dict()) for c in cells],
                     best=best, collapse_threshold=aggregation.study_threshold(study))


def read_study(session: Session, settings: Settings, study_id: int) -> StudyRead:
    return study_read(session, load_study(session, study_id), settings)


def read_table(session: Session, study_id: int) -> TableRead:
    return table_read(session, load_study(session, study_id))


def table_text(session: Session, study_id: int, format: str) -> str:
    """The study's Table-6 grid as csv, md or latex text; with axes, one grid per combination of axis values
    (CSV: the axes as leading columns)."""
    study = load_study(session, study_id)
    jobs = aggregation.study_jobs(session, study)
    if not study.axes:
        return aggregation.study_table(session, study, jobs).render(format)
    return render_panels(aggregation.study_tables(session, study, jobs), format)
