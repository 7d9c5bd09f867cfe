"""Read endpoints behind the dashboards: a job's metric history and files, a study's dashboard
snapshot and Welch's t-tests, the seven methods, and the paper's own Table 6.

Files are served from the job's output folder (`settings.jobs_dir / <id>`) by a fixed list of
names (`JOB_FILES`); no request names a path.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from liftplace.methods import METHODS, PAPER_METHOD
from liftplace.stats import COLLAPSE_FID_THRESHOLD, PAPER_TABLE6_METRIC, Run, paper_table6_rows
from server import aggregation
from server.api import READ, RowId, SessionDep, SettingsDep, not_found
from server.api.studies import load_study, study_read, study_table
from server.models import Job, Teacher
from server.schemas import StudyRead, TableRead
from server.tracking import run_url, runs_filter
from worker.spec import ERROR_MAP_FILE, LOG_FILE, METRICS_FILE, SAMPLES_FILE, read_metrics

router = APIRouter(prefix="/api", tags=["dashboards"])

JOB_FILES: dict[str, str] = {SAMPLES_FILE: "image/png", ERROR_MAP_FILE: "image/png", LOG_FILE: "text/plain"}
JobFileName = Literal[tuple(JOB_FILES)]  # type: ignore[valid-type]
DEFAULT_MAX_POINTS = 500
MAX_POINTS = 10_000


# --- responses ---------------------------------------------------------------------------------------


class MetricsRead(BaseModel):
    """A job's metric history (metrics.jsonl), downsampled to at most `max_points` steps."""

    job_id: int
    steps: list[int]
    series: dict[str, list[float | None]] = Field(description="metric name -> value at each step (null: not "
                                                  "logged at that step)")
    total_points: int = Field(description="steps in the history before downsampling")


class MethodRead(BaseModel):
    name: str
    kd: str = Field(description="output loss: none, outkd, lift or lift+place")
    featkd: bool
    lambda_kd: float
    lambda_feat: float
    description: str
    paper: bool = Field(description="the paper's full method")


class WelchRead(BaseModel):
    """Welch's t-test between two methods' FIDs (succeeded runs) under one teacher; null numbers with
    a `reason` when a side has fewer than two finite FIDs."""

    teacher: str
    method_a: str
    method_b: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    statistic: float | None
    df: float | None
    pvalue: float | None
    reason: str | None


class TeacherSize(BaseModel):
    name: str
    parameters: int | None
    label: str


class RunRead(BaseModel):
    """One try of a study, for the dashboard's cells and plots."""

    job_id: int
    teacher: str
    method: str
    seed: int
    status: str
    fid: float | None
    collapse: bool = Field(description="diverged, or FID over the collapse threshold (liftplace.stats)")
    fraction: float | None = Field(description="training progress 0..1 while it runs")
    mlflow_run_id: str | None
    mlflow_url: str | None


class MlflowCellLink(BaseModel):
    """MLflow's compare view of one (teacher, method) cell's runs (its seeds)."""

    teacher: str
    method: str
    runs: int
    url: str | None
    search_filter: str = Field(description="the same runs in MLflow's search syntax")


class DashboardRead(BaseModel):
    """Everything the study dashboard shows, in one consistent snapshot."""

    study: StudyRead
    table: TableRead
    runs: list[RunRead]
    teachers: list[TeacherSize]
    collapse_threshold: float
    welch: list[WelchRead]
    mlflow_compare_url: str | None = Field(description="MLflow's compare view of the study's distillation runs")
    mlflow_search_filter: str = Field(description="the same runs in MLflow's search syntax (no teacher runs)")
    mlflow_cells: list[MlflowCellLink] = Field(description="a compare view per cell")


class PaperCell(BaseModel):
    teacher: str
    parameters: float
    teacher_fid: float | None
    method: str
    tries: list[float]
    mean: float
    std: float


class PaperTableRead(BaseModel):
    """The paper's Table 6 as printed (liftplace/reference/paper_table6.csv)."""

    metric: str
    caption: str
    teachers: list[str]
    methods: list[str]
    cells: list[PaperCell]
    best: dict[str, list[str]]


# --- helpers -----------------------------------------------------------------------------------------


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
    if not parameters:
        return "?"
    return f"{parameters / 1e6:.2f}M" if parameters >= 10_000 else f"{parameters:,}"


def _is_collapse(job: Job, teacher: str) -> bool:
    if job.status not in ("succeeded", "diverged") or job.method is None:
        return False
    return Run(teacher=teacher, method=job.method, seed=job.seed, fid=job.fid, status=job.status).is_collapse(
        COLLAPSE_FID_THRESHOLD)


def welch_tests(table: TableRead) -> list[WelchRead]:
    """Every pair of the study's methods under each teacher, on the succeeded runs' FIDs."""
    from liftplace.stats import welch_t_test

    fids: dict[tuple[str, str], list[float]] = {}
    for cell in table.cells:
        fids[(cell.teacher, cell.method)] = [t["fid"] for t in cell.tries
                                             if t["status"] == "succeeded" and t["fid"] is not None]
    out = []
    for teacher in table.teachers:
        for a, b in combinations(table.methods, 2):
            fa, fb = fids.get((teacher, a), []), fids.get((teacher, b), [])
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
            out.append(WelchRead(**row))
    return out


# --- jobs ----------------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/metrics", dependencies=READ, response_model=MetricsRead,
            summary="A job's metric history (loss terms, beta1/beta0 as slope/intercept, w), downsampled")
def job_metrics(job_id: RowId, session: SessionDep, settings: SettingsDep,
                max_points: int = Query(DEFAULT_MAX_POINTS, ge=2, le=MAX_POINTS,
                                        description="at most this many steps (evenly spread, first and last kept)"),
                ) -> MetricsRead:
    if session.get(Job, job_id) is None:
        raise not_found("job", job_id)
    steps, series = read_metrics(settings.jobs_dir / str(job_id) / METRICS_FILE)
    keep = downsample(len(steps), max_points)
    return MetricsRead(job_id=job_id, steps=[steps[i] for i in keep],
                       series={k: [v[i] for i in keep] for k, v in series.items()}, total_points=len(steps))


@router.get("/jobs/{job_id}/files/{name}", dependencies=READ, response_class=FileResponse,
            summary="A file of the job's output folder: samples.png, error_map.png or job.log",
            responses={200: {"content": {t: {} for t in set(JOB_FILES.values())}}, 404: {}})
def job_file(job_id: RowId, name: JobFileName, session: SessionDep, settings: SettingsDep) -> FileResponse:
    if session.get(Job, job_id) is None:
        raise not_found("job", job_id)
    path = settings.jobs_dir / str(job_id) / name  # `name` is one of JOB_FILES (validated), never a path
    if not path.is_file():
        raise not_found(f"job {job_id}: file", name)
    # no-cache: a retried job rewrites its files under the same name (the ETag makes revalidation cheap).
    return FileResponse(path, media_type=JOB_FILES[name], headers={"Cache-Control": "no-cache"})


# --- studies ---------------------------------------------------------------------------------------------


@router.get("/studies/{study_id}/welch", dependencies=READ, response_model=list[WelchRead],
            summary="Welch's t-test between every two methods of the study, per teacher")
def study_welch(study_id: RowId, session: SessionDep) -> list[WelchRead]:
    table = study_table(study_id, session, format="json")
    assert isinstance(table, TableRead)
    return welch_tests(table)


@router.get("/studies/{study_id}/dashboard", dependencies=READ, response_model=DashboardRead,
            summary="The study dashboard in one snapshot: study, Table-6 grid, tries, teacher sizes, Welch tests, "
                    "MLflow compare link")
def study_dashboard(study_id: RowId, session: SessionDep, settings: SettingsDep) -> DashboardRead:
    study = load_study(session, study_id)
    table = study_table(study_id, session, format="json")
    assert isinstance(table, TableRead)
    jobs = [j for j in aggregation.study_jobs(session, study) if j.method is not None]
    runs = []
    for j in jobs:
        teacher = j.teacher.name if j.teacher else "?"
        fraction = (j.progress_step or 0) / j.progress_total if j.progress_total else None
        runs.append(RunRead(job_id=j.id, teacher=teacher, method=j.method or "", seed=j.seed, status=j.status,
                            fid=_finite(j.fid), collapse=_is_collapse(j, teacher), fraction=fraction,
                            mlflow_run_id=j.mlflow_run_id,
                            mlflow_url=run_url(settings.mlflow_ui_url, j.mlflow_experiment_id, j.mlflow_run_id)))
    sizes = dict(session.execute(select(Teacher.name, Teacher.parameters).where(Teacher.name.in_(study.teachers)))
                 .tuples().all())
    tracked = [j for j in jobs if j.kind == "distill" and j.mlflow_run_id and j.mlflow_experiment_id]
    return DashboardRead(
        study=study_read(session, study, settings), table=table, runs=runs,
        teachers=[TeacherSize(name=t, parameters=sizes.get(t), label=params_label(sizes.get(t)))
                  for t in study.teachers],
        collapse_threshold=COLLAPSE_FID_THRESHOLD, welch=welch_tests(table),
        mlflow_compare_url=compare_url(settings.mlflow_ui_url, [j.mlflow_experiment_id or "" for j in tracked],
                                       [j.mlflow_run_id or "" for j in tracked]),
        mlflow_search_filter=runs_filter(study.id), mlflow_cells=cell_links(settings.mlflow_ui_url, study.id, table,
                                                                            tracked),
    )


def cell_links(ui_url: str, study_id: int, table: TableRead, tracked: list[Job]) -> list[MlflowCellLink]:
    """One compare link per cell of `table`: the MLflow runs of its jobs (`tracked`: jobs with a run)."""
    by_job = {j.id: j for j in tracked}
    links = []
    for cell in table.cells:
        jobs = [by_job[t["job_id"]] for t in cell.tries if t.get("job_id") in by_job]
        url = compare_url(ui_url, [j.mlflow_experiment_id or "" for j in jobs], [j.mlflow_run_id or "" for j in jobs])
        links.append(MlflowCellLink(teacher=cell.teacher, method=cell.method, runs=len(jobs), url=url,
                                    search_filter=runs_filter(study_id, cell.teacher, cell.method)))
    return links


# --- reference -------------------------------------------------------------------------------------------


@router.get("/methods", dependencies=READ, response_model=list[MethodRead],
            summary="The seven distillation methods, with their losses and a one-line explanation")
def list_methods() -> list[MethodRead]:
    return [MethodRead(name=m.name, kd=m.kd, featkd=m.featkd, lambda_kd=m.lambda_kd, lambda_feat=m.lambda_feat,
                       description=m.description, paper=m.name == PAPER_METHOD) for m in METHODS.values()]


def _parameters(label: str) -> float:
    """'78.7M' -> 78.7e6 (the paper's teacher labels)."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(label[-1:].upper())
    return float(label[:-1]) * scale if scale else float(label)


@router.get("/reference/paper-table6", dependencies=READ, response_model=PaperTableRead,
            summary="The paper's Table 6 (CelebA 64x64, Inception FID, five runs per cell), as printed")
def paper_table6() -> PaperTableRead:
    rows = paper_table6_rows()
    teachers = list(dict.fromkeys(r["teacher_params"] for r in rows))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    cells = []
    for r in rows:
        tries = [float(r[k]) for k in sorted((k for k in r if k.startswith("try") and r[k]), key=lambda k: int(k[3:]))]
        cells.append(PaperCell(teacher=r["teacher_params"], parameters=_parameters(r["teacher_params"]),
                               teacher_fid=float(r["teacher_fid"]) if r.get("teacher_fid") else None,
                               method=r["method"], tries=tries, mean=float(r["fid_mean"]), std=float(r["fid_std"])))
    best = {}
    for t in teachers:
        low = min(c.mean for c in cells if c.teacher == t)
        best[t] = [c.method for c in cells if c.teacher == t and c.mean == low]
    caption = ("LIFT and PLACE (CVPR 2026), supplementary Table 6: one pruned CelebA student distilled from "
               f"{len(teachers)} teachers, {max(len(c.tries) for c in cells)} runs each; Inception FID, lower is "
               "better; std is the sample std (ddof = 1).")
    return PaperTableRead(metric=PAPER_TABLE6_METRIC, caption=caption, teachers=teachers, methods=methods,
                          cells=cells, best=best)

