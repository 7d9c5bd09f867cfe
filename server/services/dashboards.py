"""What the dashboards read: a job's metric history and files, a study's dashboard snapshot and
Welch's t-tests, the seven methods, and the paper's own Table 6.

A job's files are read from its output folder (`settings.jobs_dir / <id>`) by a fixed list of
names (`JOB_FILES`); no request names a path.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from liftplace.methods import METHODS, PAPER_METHOD
from liftplace.stats import PAPER_TABLE6_METRIC, Run, paper_table6_rows
from liftplace.tables import panel_label
from server import aggregation
from server.errors import NotFound
from server.models import Job, Study, Teacher
from server.schemas import (
    CellRead,
    DashboardRead,
    HeatmapRead,
    MethodRead,
    MetricsRead,
    MlflowCellLink,
    PanelRead,
    PaperCell,
    PaperTableRead,
    RunRead,
    TableRead,
    TeacherSize,
    WelchRead,
)
from server.services import run_files
from server.services.jobs import require_job
from server.services.studies import load_study, study_read, table_read
from server.settings import Settings
from server.tracking import run_url, runs_filter
from worker.spec import ERROR_MAP_FILE, LOG_FILE, METRICS_FILE, SAMPLES_FILE, read_metrics

JOB_FILES: dict[str, str] = {SAMPLES_FILE: "image/png", ERROR_MAP_FILE: "image/png", LOG_FILE: "text/plain"}
DEFAULT_MAX_POINTS = 500
MAX_POINTS = 10_000


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def downsample(n: int, max_points: int) -> list[int]:
    """Indices of at most `max_points` evenly spread points of `n`, always the first and the last."""
    if n <= max_points:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})


def compare_url(ui_url: str, experiment_ids: list[str], run_ids: list[str]) -> str | None:
    """MLflow's compare view: {ui}/#/compare-runs?runs=[...]&experiments=[...] (MLflow 3's route)."""
    if not run_ids:
        return None
    runs = quote(json.dumps(run_ids, separators=(",", ":")), safe="")
    experiments = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")), safe="")
    return f"{ui_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def params_label(parameters: int | None) -> str:
    """A parameter count as the dashboard shows it: '1.23M', or '5,000' under ten thousand."""
    if not parameters:
        return "?"
    return f"{parameters / 1e6:.2f}M" if parameters >= 10_000 else f"{parameters:,}"


# --- jobs ----------------------------------------------------------------------------------------------


def job_metrics(session: Session, settings: Settings, job_id: int, max_points: int) -> MetricsRead:
    """The job's metric history, at most `max_points` steps (evenly spread, first and last kept): from its
    output folder, or in cluster mode from its MLflow run when the folder is on another host."""
    job = require_job(session, job_id)
    steps, series = read_metrics(settings.jobs_dir / str(job_id) / METRICS_FILE)
    if not steps and run_files.reads_runs(settings, job):  # ran on another host: its run has the history
        steps, series = run_files.run_metrics(settings, job)
    keep = downsample(len(steps), max_points)
    return MetricsRead(job_id=job_id, steps=[steps[i] for i in keep],
                       series={k: [v[i] for i in keep] for k, v in series.items()}, total_points=len(steps))


def job_file(session: Session, settings: Settings, job_id: int, name: str) -> Path:
    """The path of one of JOB_FILES in the job's output folder, or in cluster mode of its MLflow run when the
    folder is on another host; NotFound for a job or file that is not there."""
    job = require_job(session, job_id)
    if name not in JOB_FILES:
        raise NotFound(f"job {job_id}: file", name)
    path: Path | None = settings.jobs_dir / str(job_id) / name
    if not path.is_file():
        # ran on another host: the file is an artifact of its run (uploaded when the job ended)
        path = run_files.run_file(settings, job, name) if run_files.reads_runs(
            settings, job) else None
        if path is None:
            raise NotFound(f"job {job_id}: file", name)
    return path


# --- studies ---------------------------------------------------------------------------------------------


def _is_collapse(job: Job, teacher: str, threshold: float) -> bool:
    if job.status not in ("succeeded", "diverged") or job.method is None:
        return False
    return Run(teacher=teacher, method=job.method, seed=job.seed, fid=job.fid, status=job.status).is_collapse(
        threshold)


def _welch_row(teacher: str, a: str, b: str, fa: list[float], fb: list[float]) -> WelchRead:
    from liftplace.stats import welch_t_test

    row: dict[str, Any] = dict(teacher=teacher, method_a=a, method_b=b, n_a=len(fa), n_b=len(fb),
                               mean_a=_finite(sum(fa) / len(fa)) if fa else None,
                               mean_b=_finite(sum(fb) / len(fb)) if fb else None,
                               statistic=None, df=None, pvalue=None, reason=None)
    if len(fa) < 2 or len(fb) < 2:
        row["reason"] = "needs at least two succeeded runs on each side"
    else:
        res = welch_t_test(fa, fb)
        row.update(statistic=_finite(res.statistic), df=_finite(res.df), pvalue=_finite(res.pvalue))
        if row["pvalue"] is None:
            row["reason"] = "undefined: no spread in either method's FIDs"
    return WelchRead(**row)


def _fids(cell: CellRead) -> list[float]:
    return [t["fid"] for t in cell.tries if t["status"] == "succeeded" and t["fid"] is not None]


def welch_tests(table: TableRead) -> list[WelchRead]:
    """Every pair of the study's methods under each teacher, on the succeeded runs' FIDs (a study without
    axes; with axes, see `versus_baseline`)."""
    if table.axes:
        return []
    fids: dict[tuple[str, str], list[float]] = {}
    for cell in table.cells:
        fids[(cell.teacher, cell.method)] = [t["fid"] for t in cell.tries
                                             if t["status"] == "succeeded" and t["fid"] is not None]
    return [_welch_row(teacher, a, b, fids.get((teacher, a), []), fids.get((teacher, b), []))
            for teacher in table.teachers for a, b in combinations(table.methods, 2)]


def study_welch(session: Session, study_id: int) -> list[WelchRead]:
    return welch_tests(table_read(session, load_study(session, study_id)))


def choose_baseline(table: TableRead, baseline: str | None) -> CellRead | None:
    """The baseline cell named `baseline` (CellRead.key); with axes the first cell by default; 422 on
    the query parameter for a key that is no cell of the study."""
    if baseline is None:
        return table.cells[0] if table.axes and table.cells else None
    cell = next((c for c in table.cells if c.key == baseline), None)
    if cell is None:
        known = ", ".join(c.key for c in table.cells[:20]) + (", ..." if len(table.cells) > 20 else "")
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "baseline"), "input": baseline,
                                       "msg": f"baseline: no cell {baseline!r} in this study; its cells: {known}"}])
    return cell


def versus_baseline(table: TableRead, base: CellRead | None) -> list[WelchRead]:
    """Welch's t-test of every other cell against the baseline cell (succeeded runs' FIDs)."""
    if base is None:
        return []
    rows = []
    for c in table.cells:
        if c.key == base.key:
            continue
        row = _welch_row(c.teacher, c.method, base.method, _fids(c), _fids(base))
        rows.append(row.model_copy(update={"key_a": c.key, "key_b": base.key}))
    return rows


def panel_reads(study: Study, table: TableRead) -> list[PanelRead]:
    """With axes: one grid per combination of axis values, the cells that stand in it and its best means."""
    if not table.axes:
        return []
    out = []
    for panel in aggregation.panels(study):
        cells = [c for c in table.cells if aggregation.in_panel(c.axes, panel)]
        best = {}
        for t in table.teachers:
            means = [c.mean for c in cells if c.teacher == t and c.mean is not None]
            best[t] = [c.key for c in cells if c.teacher == t and means and c.mean == min(means)]
        out.append(PanelRead(axes=panel, label=panel_label(panel), cells=[c.key for c in cells], best=best))
    return out


def heatmap_reads(table: TableRead) -> list[HeatmapRead]:
    """With exactly two axes: per (teacher, method), the cells over rows = first axis x columns = second."""
    if len(table.axes) != 2:
        return []
    (row_axis, rows), (col_axis, cols) = table.axes.items()
    out = []
    for t in table.teachers:
        for m in table.methods:
            mine = [c for c in table.cells if c.teacher == t and c.method == m]
            grid = [[next((c.key for c in mine if aggregation.in_panel(c.axes, {row_axis: r, col_axis: v})), "")
                     for v in cols] for r in rows]
            out.append(HeatmapRead(teacher=t, method=m, row_axis=row_axis, col_axis=col_axis, rows=rows, cols=cols,
                                   cells=grid))
    return out


def _run_read(job: Job, settings: Settings, threshold: float) -> RunRead:
    teacher = job.teacher.name if job.teacher else "?"
    fraction = (job.progress_step or 0) / job.progress_total if job.progress_total else None
    return RunRead(job_id=job.id, teacher=teacher, method=job.method or "", seed=job.seed, status=job.status,
                   fid=_finite(job.fid), collapse=_is_collapse(job, teacher, threshold), fraction=fraction,
                   mlflow_run_id=job.mlflow_run_id,
                   mlflow_url=run_url(settings.mlflow_ui_url, job.mlflow_experiment_id, job.mlflow_run_id))


def study_dashboard(session: Session, settings: Settings, study_id: int, baseline: str | None = None
                    ) -> DashboardRead:
    """Everything the study dashboard shows, read in one transaction; `baseline`: the cell (key) every
    other cell is tested against."""
    study = load_study(session, study_id)
    all_jobs = aggregation.study_jobs(session, study)
    table = table_read(session, study, all_jobs)
    base = choose_baseline(table, baseline)
    jobs = [j for j in all_jobs if j.method is not None]
    sizes = dict(session.execute(select(Teacher.name, Teacher.parameters).where(Teacher.name.in_(study.teachers)))
                 .all())
    tracked = [j for j in jobs if j.kind == "distill" and j.mlflow_run_id and j.mlflow_experiment_id]
    return DashboardRead(
        study=study_read(session, study, settings), table=table,
        runs=[_run_read(j, settings, table.collapse_threshold) for j in jobs],
        teachers=[TeacherSize(name=t, parameters=sizes.get(t), label=params_label(sizes.get(t)))
                  for t in study.teachers],
        collapse_threshold=table.collapse_threshold, welch=welch_tests(table),
        mlflow_compare_url=compare_url(settings.mlflow_ui_url, [j.mlflow_experiment_id or "" for j in tracked],
                                       [j.mlflow_run_id or "" for j in tracked]),
        mlflow_search_filter=runs_filter(study.id),
        mlflow_cells=cell_links(settings.mlflow_ui_url, study.id, table, tracked),
        panels=panel_reads(study, table), heatmaps=heatmap_reads(table), baseline=base.key if base else None,
        versus_baseline=versus_baseline(table, base),
    )


def cell_links(ui_url: str, study_id: int, table: TableRead, tracked: list[Job]) -> list[MlflowCellLink]:
    """One compare link per cell of `table`: the MLflow runs of its jobs (`tracked`: jobs with a run)."""
    by_job = {j.id: j for j in tracked}
    links = []
    for cell in table.cells:
        jobs = [by_job[t["job_id"]] for t in cell.tries if t.get("job_id") in by_job]
        url = compare_url(ui_url, [j.mlflow_experiment_id or "" for j in jobs], [j.mlflow_run_id or "" for j in jobs])
        links.append(MlflowCellLink(teacher=cell.teacher, method=cell.method, key=cell.key, runs=len(jobs), url=url,
                                    search_filter=runs_filter(study_id, cell.teacher, cell.method, cell.axes)))
    return links


# --- reference -------------------------------------------------------------------------------------------


def list_methods() -> list[MethodRead]:
    """The seven distillation methods (liftplace.methods), the paper's marked."""
    return [MethodRead(name=m.name, kd=m.kd, featkd=m.featkd, lambda_kd=m.lambda_kd, lambda_feat=m.lambda_feat,
                       description=m.description, paper=m.name == PAPER_METHOD) for m in METHODS.values()]


def _parameters(label: str) -> float:
    """'78.7M' -> 78.7e6 (the paper's teacher labels)."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(label[-1:].upper())
    return float(label[:-1]) * scale if scale else float(label)


def _paper_cell(r: dict[str, str]) -> PaperCell:
    tries = [float(r[k]) for k in sorted((k for k in r if k.startswith("try") and r[k]), key=lambda k: int(k[3:]))]
    return PaperCell(teacher=r["teacher_params"], parameters=_parameters(r["teacher_params"]),
                     teacher_fid=float(r["teacher_fid"]) if r.get("teacher_fid") else None,
                     method=r["method"], tries=tries, mean=float(r["fid_mean"]), std=float(r["fid_std"]))


def paper_table6() -> PaperTableRead:
    """The paper's Table 6 as printed (liftplace/reference/paper_table6.csv), best mean(s) per teacher."""
    rows = paper_table6_rows()
    teachers = list(dict.fromkeys(r["teacher_params"] for r in rows))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    cells = [_paper_cell(r) for r in rows]
    best = {}
    for t in teachers:
        low = min(c.mean for c in cells if c.teacher == t)
        best[t] = [c.method for c in cells if c.teacher == t and c.mean == low]
    caption = ("LIFT and PLACE (CVPR 2026), supplementary Table 6: one pruned CelebA student distilled from "
               f"{len(teachers)} teachers, {max(len(c.tries) for c in cells)} runs each; Inception FID, lower is "
               "better; std is the sample std (ddof = 1).")
    return PaperTableRead(metric=PAPER_TABLE6_METRIC, caption=caption, teachers=teachers, methods=methods,
                          cells=cells, best=best)
