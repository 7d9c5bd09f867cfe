"""/api/jobs: submit a distillation run, list and read jobs, cancel, retry, logs."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from server import idempotency
from server.api import MAX_ROW_ID, READ, WRITE, Offset, RowId, SettingsDep, create, read, wake_dispatcher, write
from server.schemas import JobCreate, JobRead, JobStatus, LogsRead, Page
from server.services import jobs

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.post("", dependencies=WRITE, status_code=201, response_model=JobRead, summary="Submit a distillation run")
async def create_job(body: JobCreate, settings: SettingsDep, request: Request,
                     idempotency_key: idempotency.IdempotencyKeyHeader = None) -> JobRead | Response:
    answer = await create(request, "POST /api/jobs", idempotency_key, body,
                          lambda session: jobs.create_job(session, settings, body))
    if not isinstance(answer, Response):
        wake_dispatcher(request)
    return answer


@router.get("", dependencies=READ, response_model=Page[JobRead], summary="List jobs (newest first)",
            responses={304: {"description": "the page is unchanged since the ETag given in If-None-Match"}})
async def list_jobs(
    request: Request,
    settings: SettingsDep,
    status: JobStatus | None = None,
    study: int | None = Query(None, ge=1, le=MAX_ROW_ID, description="only the jobs of this study"),
    kind: str | None = Query(None, pattern="^(distill|teacher)$"),
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> Response:
    # The answer is built and encoded by the service (or found in the app's page cache, by database
    # revision), so it goes out as bytes; `response_model` still documents it.
    page = await read(request, jobs.list_jobs_encoded, settings, request.app.state.page_cache, status=status,
                      study=study, kind=kind, limit=limit, offset=offset)
    return page.response(request.headers.get("if-none-match"))


@router.get("/{job_id}", dependencies=READ, response_model=JobRead,
            summary="A job: status, progress, metrics, MLflow run")
async def get_job(job_id: RowId, request: Request, settings: SettingsDep) -> JobRead:
    return await read(request, jobs.read_job, settings, job_id)


@router.post("/{job_id}/cancel", dependencies=WRITE, response_model=JobRead,
             summary="Cancel a queued, dispatched or running job")
async def cancel_job(job_id: RowId, request: Request, settings: SettingsDep) -> JobRead:
    answer = await write(request, jobs.cancel_job, settings, job_id)
    wake_dispatcher(request)
    return answer


@router.post("/{job_id}/retry", dependencies=WRITE, response_model=JobRead,
             summary="Queue a failed, diverged or cancelled job again")
async def retry_job(job_id: RowId, request: Request, settings: SettingsDep) -> JobRead:
    answer = await write(request, jobs.retry_job, settings, job_id)
    wake_dispatcher(request)
    return answer


@router.get("/{job_id}/logs", dependencies=READ, response_model=LogsRead,
            summary="A job's log lines (worker and server)")
async def job_logs(job_id: RowId, request: Request, offset: Offset = 0,
                   limit: int = Query(1000, ge=1, le=10_000)) -> LogsRead:
    return await read(request, jobs.job_logs, job_id, offset=offset, limit=limit)
