"""/api/studies: teachers x methods x seeds in one request, and their Table-6 grid."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from server import idempotency
from server.api import READ, WRITE, Offset, RowId, SessionDep, SettingsDep, wake_dispatcher
from server.schemas import Page, StudyCreate, StudyRead, TableRead
from server.services import studies

router = APIRouter(prefix="/api/studies", tags=["studies"])

TABLE_MEDIA_TYPES = {"csv": "text/csv", "md": "text/markdown", "latex": "application/x-latex"}


@router.post("", dependencies=WRITE, status_code=201, response_model=StudyRead,
             summary="Create a study: one job per teacher x method x seed")
def create_study(body: StudyCreate, session: SessionDep, settings: SettingsDep, request: Request,
                 idempotency_key: idempotency.IdempotencyKeyHeader = None) -> StudyRead | Response:
    claimed = idempotency.claim(session, settings, "POST /api/studies", idempotency_key, body)
    if isinstance(claimed, Response):
        return claimed
    study = studies.create_study(session, settings, body)
    read = studies.study_read(session, study, settings)
    idempotency.record(claimed, 201, read, study.id)
    session.commit()  # the study, all its jobs and the key, or nothing
    wake_dispatcher(request)
    return read


@router.get("", dependencies=READ, response_model=Page[StudyRead], summary="List studies (newest first)")
def list_studies(session: SessionDep, settings: SettingsDep, limit: int = Query(50, ge=1, le=500),
                 offset: Offset = 0) -> Page[StudyRead]:
    return studies.list_studies(session, settings, limit=limit, offset=offset)


@router.get("/{study_id}", dependencies=READ, response_model=StudyRead, summary="A study and the status of its jobs")
def get_study(study_id: RowId, session: SessionDep, settings: SettingsDep) -> StudyRead:
    return studies.study_read(session, studies.load_study(session, study_id), settings)


@router.post("/{study_id}/cancel", dependencies=WRITE, response_model=StudyRead,
             summary="Cancel every queued or running job of a study")
def cancel_study(study_id: RowId, session: SessionDep, settings: SettingsDep, request: Request) -> StudyRead:
    study = studies.cancel_study(session, settings, study_id)
    read = studies.study_read(session, study, settings)
    session.commit()
    wake_dispatcher(request)
    return read


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
    if format != "json":
        return PlainTextResponse(studies.table_text(session, study_id, format), media_type=TABLE_MEDIA_TYPES[format])
    return studies.table_read(session, studies.load_study(session, study_id))
