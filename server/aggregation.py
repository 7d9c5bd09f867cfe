"""Study aggregation: from a study's jobs to its Table-6 grid and its stored cell summaries.

Everything here is computed from the jobs, with `liftplace.stats` doing the statistics (mean,
sample std, collapses), so a cell can always be recomputed. `update_cell` writes the summary of
a (teacher, method) cell once every seed of it has ended, inside the caller's transaction:
the row is written complete together with the outcome that completed it, or not at all.

Writers of one study's cells take the study's row lock first (`lock_study`), so two transactions
that each end one of a cell's last seeds cannot both miss the other's outcome (PostgreSQL's READ
COMMITTED would let them, and the cell would never be written); SQLite's BEGIN IMMEDIATE already
serialises writers. `repair_cells` writes any cell that is still missing (the dispatcher runs it
at start-up), so a cell is always complete or recomputed, never half-written.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, selectinload

from liftplace.job_status import JOB_STATUSES, TERMINAL_STATUSES
from liftplace.methods import AXIS_OPTIONS, METHOD_NAMES, get_method
from liftplace.stats import Run, StabilityTable, build_table, collapse_threshold
from server.models import Job, Study, StudyCell, Teacher, utcnow

DEFAULT_METRIC = "fid"  # shown while no run has reported its FID features yet


def study_threshold(study: Study) -> float:
    """The FID above which a run of the study counts as a collapse: the study's own, else its FID family's."""
    return collapse_threshold(study.dataset.fid_features, study.collapse_fid)


# --- axes: a cell is (teacher, method, the values of the axes its method uses) -----------------------------


def study_axes(study: Study) -> dict[str, list[Any]]:
    """The study's axes, option -> values, in AXIS_OPTIONS order ({} without axes)."""
    axes = study.axes or {}
    return {a: list(axes[a]) for a in AXIS_OPTIONS if a in axes}


def axes_text(values: Mapping[str, Any]) -> str:
    """Axis values as canonical JSON text (sorted keys, no spaces): how a cell's values are stored and keyed."""
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


def cell_key(teacher: str, method: str, axes: Mapping[str, Any]) -> str:
    """A cell's name in the API (the dashboard's `baseline`): "teacher/method", then its axis values as JSON."""
    return f"{teacher}/{method}" + (f"/{axes_text(axes)}" if axes else "")


def job_option(job: Job, option: str) -> Any:
    """The value of a sweepable option in a job: steps and student_ratio have columns, the rest `Job.options`."""
    if option == "steps":
        return job.steps
    if option == "student_ratio":
        return job.student_ratio
    return (job.options or {}).get(option)


def used_axes(study: Study, method: str) -> dict[str, list[Any]]:
    """The study's axes that `method` uses (liftplace.methods: MethodSpec.uses_option); the others it ignores."""
    return {a: v for a, v in study_axes(study).items() if get_method(method).uses_option(a)}


def job_axes(study: Study, job: Job) -> dict[str, Any]:
    """The axis values of a study job's cell: the job's value of every axis its method uses."""
    return {a: job_option(job, a) for a in used_axes(study, job.method or "")} if job.method else {}


def method_combos(study: Study, method: str) -> list[dict[str, Any]]:
    """The axis values of `method`'s cells under one teacher: the product of the axes it uses ([{}] if none)."""
    axes = used_axes(study, method)
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def cells_total(study: Study) -> int:
    """The number of cells of the study: teachers x (each method's axis combinations)."""
    return len(study.teachers) * sum(len(method_combos(study, m)) for m in study.methods)


def panels(study: Study) -> list[dict[str, Any]]:
    """Every combination of the study's axis values ([{}] without axes): one Table-6 grid each."""
    axes = study_axes(study)
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def in_panel(cell_axes: Mapping[str, Any], panel: Mapping[str, Any]) -> bool:
    """Whether a cell stands in the panel: it agrees on every axis it has (an ignored axis: every panel)."""
    return all(panel.get(a) == v for a, v in cell_axes.items())


@dataclass
class CellData:
    """A (teacher, method, axis values) cell computed from its jobs."""

    teacher: str
    method: str
    tries: list[dict[str, Any]]
    n: int
    mean: float | None
    std: float | None
    collapses: int
    status_counts: dict[str, int]
    complete: bool
    fid_metric: str | None
    axes: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _run(job: Job, teacher: str) -> Run | None:
    """The job as a stats Run; None while it has not ended, or when it was cancelled (not a try)."""
    if job.status not in ("succeeded", "diverged", "failed") or job.method is None:
        return None
    return Run(teacher=teacher, method=job.method, seed=job.seed, fid=job.fid, status=job.status)


def _teacher_name(job: Job) -> str:
    return job.teacher.name if job.teacher is not None else "?"


def study_jobs(session: Session, study: Study) -> list[Job]:
    return list(session.scalars(
        select(Job).where(Job.study_id == study.id).options(selectinload(Job.teacher)).order_by(Job.id)))


def _metric(jobs: list[Job]) -> str:
    found = Counter(j.fid_metric for j in jobs if j.fid_metric)
    return found.most_common(1)[0][0] if found else DEFAULT_METRIC


def compute_cell(teacher: str, method: str, jobs: list[Job], threshold: float,
                 axes: Mapping[str, Any] | None = None) -> CellData:
    """Summarise one cell's jobs with liftplace.stats (mean/std of succeeded runs, collapses: diverged or
    FID over `threshold`); `axes` are the cell's axis values."""
    counts = {s: 0 for s in JOB_STATUSES} | Counter(j.status for j in jobs)
    runs = [r for j in jobs if (r := _run(j, teacher)) is not None]
    n, mean, std, collapses = 0, None, None, 0
    if runs:
        cell = build_table(runs, metric=_metric(jobs), collapse_threshold=threshold).cell(method, teacher)
        assert cell is not None
        collapses = cell.collapses
        if cell.summary is not None:
            n, mean, std = cell.summary.n, _finite(cell.summary.mean), _finite(cell.summary.std)
    tries = [{"seed": j.seed, "job_id": j.id, "status": j.status, "fid": _finite(j.fid)}
             for j in sorted(jobs, key=lambda j: (j.seed, j.id))]
    return CellData(teacher=teacher, method=method, tries=tries, n=n, mean=mean, std=std, collapses=collapses,
                    status_counts=dict(counts), complete=bool(jobs) and all(j.ended for j in jobs),
                    fid_metric=next((j.fid_metric for j in jobs if j.fid_metric), None), axes=dict(axes or {}),
                    key=cell_key(teacher, method, axes or {}))


def ordered_methods(study: Study) -> list[str]:
    return [m for m in METHOD_NAMES if m in study.methods]


def study_cells(study: Study, jobs: list[Job]) -> list[CellData]:
    """Every cell of the study, teachers in the study's order, methods in METHOD_NAMES order, then the
    method's axis values in the order the study lists them."""
    by_cell: dict[tuple[str, str, str], list[Job]] = {}
    for j in jobs:
        by_cell.setdefault((_teacher_name(j), j.method or "", axes_text(job_axes(study, j))), []).append(j)
    threshold = study_threshold(study)
    return [compute_cell(t, m, by_cell.get((t, m, axes_text(a)), []), threshold, a) for t in study.teachers
            for m in ordered_methods(study) for a in method_combos(study, m)]


def _params_label(parameters: int | None) -> str | None:
    if not parameters:
        return None
    return f"{parameters / 1e6:.2f}M" if parameters >= 10_000 else f"{parameters:,}"


def study_table(session: Session, study: Study, jobs: list[Job] | None = None,
                panel: Mapping[str, Any] | None = None) -> StabilityTable:
    """The study as a liftplace `StabilityTable` (csv / md / latex export), with every study cell; with `panel`
    (axis values), the grid of that panel only: the jobs whose cell stands in it."""
    jobs = study_jobs(session, study) if jobs is None else jobs
    if panel is not None:
        jobs = [j for j in jobs if in_panel(job_axes(study, j), panel)]
    runs = [r for j in jobs if (r := _run(j, _teacher_name(j))) is not None]
    metric = _metric(jobs)
    threshold = study_threshold(study)
    table = (build_table(runs, metric=metric, collapse_threshold=threshold) if runs
             else StabilityTable(metric=metric, methods=(), teachers=(), cells={}, collapse_threshold=threshold))
    # Rows and columns for every cell of the study, also those with no ended run yet.
    table.methods = tuple(ordered_methods(study))
    table.teachers = tuple(study.teachers)
    teachers = session.scalars(select(Teacher).where(Teacher.name.in_(study.teachers))).all()
    table.teacher_params = {t.name: _params_label(t.parameters) for t in teachers}
    return table


def study_tables(session: Session, study: Study, jobs: list[Job] | None = None
                 ) -> list[tuple[dict[str, Any], StabilityTable]]:
    """One `StabilityTable` per panel (combination of axis values); one table, panel {}, without axes."""
    jobs = study_jobs(session, study) if jobs is None else jobs
    return [(p, study_table(session, study, jobs, p)) for p in panels(study)]


def lock_study(session: Session, study_id: int) -> None:
    """Hold the study's row lock until the transaction ends: its cell writers go one at a time.

    Call it before changing the study's jobs (pending changes are not flushed first), so every
    writer locks the study before its job rows: one order, no deadlock. A no-op on SQLite.
    """
    with session.no_autoflush:
        # FOR NO KEY UPDATE: serialises cell writers without blocking rows that merely refer to the study.
        session.execute(select(Study.id).where(Study.id == study_id).with_for_update(key_share=True))


def update_cell(session: Session, study: Study, teacher: str, method: str,
                axes: Mapping[str, Any] | None = None) -> StudyCell | None:
    """Write the cell's summary if every seed has ended (else remove a stale one). Caller commits.

    `axes`: the cell's axis values (`job_axes`), None or {} in a study without axes."""
    axes = dict(axes or {})
    text = axes_text(axes)
    lock_study(session, study.id)
    # populate_existing: what another transaction committed while we waited for the lock, not
    # what this session loaded before it.
    jobs = list(session.scalars(
        select(Job).join(Teacher, Job.teacher_id == Teacher.id).options(selectinload(Job.teacher))
        .where(Job.study_id == study.id, Teacher.name == teacher, Job.method == method)
        .execution_options(populate_existing=True)))
    jobs = [j for j in jobs if axes_text(job_axes(study, j)) == text]
    data = compute_cell(teacher, method, jobs, study_threshold(study), axes)
    existing = session.scalar(select(StudyCell).where(
        StudyCell.study_id == study.id, StudyCell.teacher == teacher, StudyCell.method == method,
        StudyCell.axes == text).execution_options(populate_existing=True))
    if not data.complete:
        if existing is not None:
            session.delete(existing)
        return None
    row = existing or StudyCell(study_id=study.id, teacher=teacher, method=method, axes=text)
    row.fid_metric = data.fid_metric
    row.tries = data.tries
    row.n, row.mean, row.std, row.collapses = data.n, data.mean, data.std, data.collapses
    row.status_counts = data.status_counts
    row.logged_to_mlflow = False
    row.computed_at = utcnow()
    if existing is None:
        session.add(row)
    return row


def recompute_study(session: Session, study: Study) -> list[StudyCell]:
    """Rebuild all the study's cell rows from its jobs (caller commits)."""
    session.execute(delete(StudyCell).where(StudyCell.study_id == study.id))
    session.flush()
    rows = []
    for t in study.teachers:
        for m in ordered_methods(study):
            for a in method_combos(study, m):
                if (row := update_cell(session, study, t, m, a)) is not None:
                    rows.append(row)
    return rows


def repair_cells(session: Session) -> list[tuple[int, str, str]]:
    """Write the cells of ended seeds that have no row yet; returns them as (study id, teacher, method)
    (a study with axes may repair several cells of one (teacher, method)).

    Such a cell is left by an older version, a manual delete or a restored backup; each is
    written by `update_cell` in the caller's transaction. Only studies with fewer rows than
    cells are read.
    """
    rows = session.execute(
        select(Study, func.count(StudyCell.id)).outerjoin(StudyCell, StudyCell.study_id == Study.id)
        .group_by(Study.id)).all()
    repaired = []
    for study, stored in rows:
        if stored >= cells_total(study):
            continue
        have = {(c.teacher, c.method, c.axes) for c in study.cells}
        for cell in study_cells(study, study_jobs(session, study)):
            if cell.complete and (cell.teacher, cell.method, axes_text(cell.axes)) not in have:
                update_cell(session, study, cell.teacher, cell.method, cell.axes)
                repaired.append((study.id, cell.teacher, cell.method))
    return repaired


def study_status(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if total and sum(counts.get(s, 0) for s in TERMINAL_STATUSES) == total:
        return "ended"
    if counts.get("queued", 0) == total:
        return "queued"
    return "running"
