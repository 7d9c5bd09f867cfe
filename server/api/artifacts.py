"""Read endpoints behind the dashboards: a job's metric history and files, a study's dashboard
snapshot and Welch's t-tests, the seven methods, and the paper's own Table 6
(computed in `server.services.dashboards`).

Files are served from the job's output folder by a fixed list of names (`JOB_FILES`); no
request names a path.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from server.api import READ, RowId, SettingsDep, read
from server.schemas import DashboardRead, MethodRead, MetricsRead, PaperTableRead, WelchRead
from server.services import dashboards
from server.services.dashboards import DEFAULT_MAX_POINTS, JOB_FILES, MAX_POINTS

router = APIRouter(prefix="/api", tags=["dashboards"])

JobFileName = Literal[tuple(JOB_FILES)]  # type: ignore[valid-type]


@router.get("/jobs/{job_id}/metrics", dependencies=READ, response_model=MetricsRead,
            summary="A job's metric history (loss terms, beta1/beta0 as slope/intercept, w), downsampled")
async def job_metrics(job_id: RowId, request: Request, settings: SettingsDep,
                      max_points: int = Query(DEFAULT_MAX_POINTS, ge=2, le=MAX_POINTS, description="at most this "
                                              "many steps (evenly spread, first and last kept)"),
                      ) -> MetricsRead:
    return await read(request, dashboards.job_metrics, settings, job_id, max_points)


@router.get("/jobs/{job_id}/files/{name}", dependencies=READ, response_class=FileResponse,
            summary="A file of the job's output folder: samples.png, error_map.png or job.log",
            responses={200: {"content": {t: {} for t in set(JOB_FILES.values())}}, 404: {}})
async def job_file(job_id: RowId, name: JobFileName, request: Request, settings: SettingsDep) -> FileResponse:
    path = await read(request, dashboards.job_file, settings, job_id, name)
    # no-cache: a retried job rewrites its files under the same name (the ETag makes revalidation cheap).
    return FileResponse(path, media_type=JOB_FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/studies/{study_id}/welch", dependencies=READ, response_model=list[WelchRead],
            summary="Welch's t-test between every two methods of the study, per teacher")
async def study_welch(study_id: RowId, request: Request) -> list[WelchRead]:
    return await read(request, dashboards.study_welch, study_id)


@router.get("/studies/{study_id}/dashboard", dependencies=READ, response_model=DashboardRead,
            summary="The study dashboard in one snapshot: study, Table-6 grid, tries, teacher sizes, Welch tests, "
                    "MLflow compare link")
async def study_dashboard(study_id: RowId, request: Request, settings: SettingsDep,
                          baseline: str | None = Query(None, max_length=2000, description="the cell (its `key`) "
                                                       "every other cell is tested against with Welch's t-test"),
                          ) -> DashboardRead:
    return await read(request, dashboards.study_dashboard, settings, study_id, baseline)


@router.get("/methods", dependencies=READ, response_model=list[MethodRead],
            summary="The seven distillation methods, with their losses and a one-line explanation")
def list_methods() -> list[MethodRead]:
    return dashboards.list_methods()


@router.get("/reference/paper-table6", dependencies=READ, response_model=PaperTableRead,
            summary="The paper's Table 6 (CelebA 64x64, Inception FID, five runs per cell), as printed")
def paper_table6() -> PaperTableRead:
    return dashboards.paper_table6()
