"""/api/teachers: register a local diffusers folder, or queue the training of a teacher
(the sources are described in `server.services.teachers`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server import idempotency
from server.api import READ, WRITE, SessionDep, SettingsDep, wake_dispatcher
from server.schemas import TeacherCreate, TeacherRead
from server.services import teachers

router = APIRouter(prefix="/api/teachers", tags=["teachers"])


@router.get("", dependencies=READ, response_model=list[TeacherRead], summary="Registered teachers")
def list_teachers(session: SessionDep) -> list[TeacherRead]:
    return teachers.list_teachers(session)


@router.get("/{name}", dependencies=READ, response_model=TeacherRead, summary="A registered teacher")
def get_teacher(name: str, session: SessionDep) -> TeacherRead:
    return teachers.read_teacher(session, name)


@router.post("", dependencies=WRITE, status_code=201, response_model=TeacherRead,
             summary="Register a local teacher folder, or queue a teacher-training job")
def create_teacher(body: TeacherCreate, session: SessionDep, settings: SettingsDep, request: Request,
                   idempotency_key: idempotency.IdempotencyKeyHeader = None) -> TeacherRead | Response:
    claimed = idempotency.claim(session, settings, "POST /api/teachers", idempotency_key, body)
    if isinstance(claimed, Response):
        return claimed
    teacher = teachers.create_teacher(session, settings, body)
    read = teachers.teacher_read(session, teacher)
    idempotency.record(claimed, 201, read, teacher.id)
    session.commit()
    if teacher.status == "training":
        wake_dispatcher(request)
    return read
