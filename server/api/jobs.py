"""/api/jobs: submit a distillation run, list and read jobs, cancel, retry, logs."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from server import idempotency
from server.api import MAX_ROW_ID, READ, WRITE, Offset, RowId, SessionDep, SettingsDep, wake_dispatcher
from server.schemas import JobCreate, JobRead, JobStatus, LogsRead, Page
from server.services import jobs, lifecycle

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.post("", dependencies=WRITE, status_code=201, response_model=JobRead, summary="Submit a distillation run")
def create_job(body: JobCreate, session: SessionDep, settings: SettingsDep, request: Request,
               idempotency_key: idempotency.IdempotencyKeyHeader = None) -> JobRead | Response:
    claimed = idempotency.claim(session, settings, "POST /api/jobs", idempotency_key, body)
    if isinstance(claimed, Response):
        return claimed
    job = jobs.create_job(session, settings, body)
    read = jobs.job_read(job, settings)
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
    return jobs.list_jobs(session, settings, status=status, study=study, kind=kind, limit=limit, offset=offset)


@router.get("/{job_id}", dependencies=READ, response_model=JobRead,
            summary="A job: status, progress, metrics, MLflow run")
def get_job(job_id: RowId, session: SessionDep, settings: SettingsDep) -> JobRead:
    return jobs.read_job(session, settings, job_id)


@router.post("/{job_id}/cancel", dependencies=WRITE, response_model=JobRead, summary="Cancel a queued or running job")
def cancel_job(job_id: RowId, session: SessionDep, settings: SettingsDep, request: Request) -> JobRead:
    lifecycle.cancel_job(session, settings, job_id)
    read = jobs.read_job(session, settings, job_id)
    session.commit()
    wake_dispatcher(request)
    return read


@router.post("/{job_id}/retry", dependencies=WRITE, response_model=JobRead,
             summary="Queue a failed, diverged or cancelled job again")
def retry_job(job_id: RowId, session: SessionDep, settings: SettingsDep, request: Request) -> JobRead:
    lifecycle.retry_job(session, job_id)
    read = jobs.read_job(session, settings, job_id)
    session.commit()
    wake_dispatcher(request)
    return read


@router.get("/{job_id}/logs", dependencies=READ, response_model=LogsRead,
            summary="A job's log lines (worker and server)")
def job_logs(job_id: RowId, session: SessionDep, offset: Offset = 0,
             limit: int = Query(1000, ge=1, le=10_000)) -> LogsRead:
    return jobs.job_logs(session, job_id, offset=offset, limit=limit)
