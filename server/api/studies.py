"""/api/studies: teachers x methods x seeds in one request, and their Table-6 grid."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from server import idempotency
from server.api import READ, WRITE, Offset, RowId, SettingsDep, create, read, wake_dispatcher, write
from server.schemas import Page, StudyCreate, StudyRead, TableRead
from server.services import studies

router = APIRouter(prefix="/api/studies", tags=["studies"])

TABLE_MEDIA_TYPES = {"csv": "text/csv", "md": "text/markdown", "latex": "application/x-latex"}


@router.post("", dependencies=WRITE, status_code=201, response_model=StudyRead,
             summary="Create a study: one job per teacher x method x seed")
async def create_study(body: StudyCreate, settings: SettingsDep, request: Request,
                       idempotency_key: idempotency.IdempotencyKeyHeader = None) -> StudyRead | Response:
    # The study, all its jobs and the key in one transaction, or nothing.
    answer = await create(request, "POST /api/studies", idempotency_key, body,
                          lambda session: studies.create_study(session, settings, body))
    if not isinstance(answer, Response):
        wake_dispatcher(request)
    return answer


@router.get("", dependencies=READ, response_model=Page[StudyRead], summary="List studies (newest first)")
async def list_studies(request: Request, settings: SettingsDep, limit: int = Query(50, ge=1, le=500),
                       offset: Offset = 0) -> Page[StudyRead]:
    return await read(request, studies.list_studies, settings, limit=limit, offset=offset)


@router.get("/{study_id}", dependencies=READ, response_model=StudyRead, summary="A study and the status of its jobs")
async def get_study(study_id: RowId, request: Request, settings: SettingsDep) -> StudyRead:
    return await read(request, studies.read_study, settings, study_id)


@router.post("/{study_id}/cancel", dependencies=WRITE, response_model=StudyRead,
             summary="Cancel every queued, dispatched or running job of a study")
async def cancel_study(study_id: RowId, request: Request, settings: SettingsDep) -> StudyRead:
    answer = await write(request, studies.cancel_study, settings, study_id)
    wake_dispatcher(request)
    return answer


@router.get(
    "/{study_id}/table",
    dependencies=READ,
    response_model=TableRead,
    summary="The study's Table-6 grid (JSON, or ?format=csv|md|latex)",
    responses={200: {"content": {t: {} for t in TABLE_MEDIA_TYPES.values()}}},
)
async def study_table(
    study_id: RowId,
    request: Request,
    format: Literal["json", "csv", "md", "latex"] = Query("json", description="json, csv, md (Markdown) or latex"),
) -> TableRead | Response:
    if format != "json":
        text = await read(request, studies.table_text, study_id, format)
        return PlainTextResponse(text, media_type=TABLE_MEDIA_TYPES[format])
    return await read(request, studies.read_table, study_id)
