"""/api/teachers: register a local diffusers folder, or queue the training of a teacher
(the sources are described in `server.services.teachers`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server import idempotency
from server.api import READ, WRITE, SettingsDep, create, read, wake_dispatcher
from server.schemas import TeacherCreate, TeacherRead
from server.services import teachers

router = APIRouter(prefix="/api/teachers", tags=["teachers"])


@router.get("", dependencies=READ, response_model=list[TeacherRead], summary="Registered teachers")
async def list_teachers(request: Request) -> list[TeacherRead]:
    return await read(request, teachers.list_teachers)


@router.get("/{name}", dependencies=READ, response_model=TeacherRead, summary="A registered teacher")
async def get_teacher(name: str, request: Request) -> TeacherRead:
    return await read(request, teachers.read_teacher, name)


@router.post("", dependencies=WRITE, status_code=201, response_model=TeacherRead,
             summary="Register a local teacher folder, or queue a teacher-training job")
async def create_teacher(body: TeacherCreate, settings: SettingsDep, request: Request,
                         idempotency_key: idempotency.IdempotencyKeyHeader = None) -> TeacherRead | Response:
    answer = await create(request, "POST /api/teachers", idempotency_key, body,
                          lambda session: teachers.create_teacher(session, settings, body))
    if isinstance(answer, TeacherRead) and answer.status == "training":  # its training job is queued
        wake_dispatcher(request)
    return answer
