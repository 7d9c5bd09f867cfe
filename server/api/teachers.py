"""/api/teachers: register a local diffusers folder, or queue the training of a teacher.

- source "local": a sub-folder of LIFTPLACE_TEACHERS_DIR, checked to load as a UNet; ready at once.
- source "preset": a fresh teacher of a liftplace preset trained on a registered dataset.
- source "pruned": another teacher pruned at `prune_ratio` and retrained (the paper's smaller
  teachers). It waits for its base teacher if that one is still training.

Distillation jobs that name a teacher still in training are queued and wait for it.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from liftplace.models import LIFTPLACE_META_FILE
from server import idempotency
from server.api import READ, WRITE, SessionDep, SettingsDep, conflict, not_found, unique_or_conflict, wake_dispatcher
from server.api.jobs import TRAIN_OPTION_FIELDS, check_steps, get_dataset, get_usable_teacher, image_size
from server.models import Job, Teacher
from server.schemas import (
    LocalTeacherCreate,
    PresetTeacherCreate,
    PrunedTeacherCreate,
    TeacherCreate,
    TeacherRead,
    invalid,
)
from server.settings import Settings

router = APIRouter(prefix="/api/teachers", tags=["teachers"])


def teacher_read(session: Session, teacher: Teacher) -> TeacherRead:
    job_id = session.scalar(select(Job.id).where(Job.output_teacher_id == teacher.id).order_by(Job.id.desc()))
    return TeacherRead(
        id=teacher.id, name=teacher.name, source=teacher.source, status=teacher.status,  # type: ignore[arg-type]
        folder=teacher.folder, preset=teacher.preset,
        base_teacher=teacher.base_teacher.name if teacher.base_teacher else None, prune_ratio=teacher.prune_ratio,
        dataset=teacher.dataset.name if teacher.dataset else None, parameters=teacher.parameters, job_id=job_id,
        reason=teacher.reason, created_at=teacher.created_at,
    )


def _local_parameters(settings: Settings, body: LocalTeacherCreate) -> tuple[str, int]:
    """Check that the folder holds a loadable diffusers UNet; returns (folder, parameter count)."""
    folder = body.folder or body.name
    field = "folder" if body.folder else "name"
    try:
        path = settings.teacher_folder(folder)
    except ValueError as exc:
        raise invalid(field, f"{field}: {exc}", folder) from None
    if not path.is_dir():
        raise invalid(field, f"{field}: no folder {folder!r} in the teachers root (LIFTPLACE_TEACHERS_DIR)", folder)
    if not (path / "config.json").is_file() and not (path / "unet" / "config.json").is_file():
        raise invalid(field, f"{field}: {folder!r} is not a diffusers model folder (no config.json, no "
                             "unet/config.json)", folder)
    meta = path / LIFTPLACE_META_FILE
    if meta.is_file():  # saved by liftplace: the count is recorded, no need to load the weights
        try:
            return folder, int(json.loads(meta.read_text())["parameters"])
        except (ValueError, KeyError, TypeError):
            pass
    # Load it once now: a broken teacher is refused here rather than failing every job that uses it.
    from liftplace.models import count_parameters, load_unet

    try:
        return folder, count_parameters(load_unet(path))
    except Exception as exc:
        raise invalid(field, f"{field}: {folder!r} does not load as a UNet2DModel: {exc}", folder) from None


def _check_preset(body: PresetTeacherCreate, size: int) -> None:
    from liftplace.presets import TEACHER_PRESETS

    factor = 2 ** (len(TEACHER_PRESETS[body.preset].block_out_channels) - 1)
    if size % factor != 0:
        raise invalid("preset", f"preset: {body.preset!r} halves the image {factor // 2 or 1} time(s) down to "
                                f"1/{factor}; a {size}x{size} image does not divide (choose another preset or a "
                                "resolution)", body.preset)


@router.get("", dependencies=READ, response_model=list[TeacherRead], summary="Registered teachers")
def list_teachers(session: SessionDep) -> list[TeacherRead]:
    teachers = session.scalars(select(Teacher).options(selectinload(Teacher.base_teacher),
                                                       selectinload(Teacher.dataset)).order_by(Teacher.id))
    return [teacher_read(session, t) for t in teachers]


@router.get("/{name}", dependencies=READ, response_model=TeacherRead, summary="A registered teacher")
def get_teacher(name: str, session: SessionDep) -> TeacherRead:
    teacher = session.scalar(select(Teacher).where(Teacher.name == name))
    if teacher is None:
        raise not_found("teacher", name)
    return teacher_read(session, teacher)


@router.post("", dependencies=WRITE, status_code=201, response_model=TeacherRead,
             summary="Register a local teacher folder, or queue a teacher-training job")
def create_teacher(body: TeacherCreate, session: SessionDep, settings: SettingsDep, request: Request,
                   idempotency_key: idempotency.IdempotencyKeyHeader = None) -> TeacherRead | Response:
    claimed = idempotency.claim(session, settings, "POST /api/teachers", idempotency_key, body)
    if isinstance(claimed, Response):
        return claimed
    taken = f"name: a teacher named {body.name!r} already exists"
    if session.scalar(select(Teacher.id).where(Teacher.name == body.name)) is not None:
        raise conflict(taken)
    if isinstance(body, LocalTeacherCreate):
        folder, parameters = _local_parameters(settings, body)
        teacher = Teacher(name=body.name, source="local", status="ready", folder=folder, parameters=parameters)
        session.add(teacher)
        with unique_or_conflict(session, taken):
            session.flush()
            read = teacher_read(session, teacher)
            idempotency.record(claimed, 201, read, teacher.id)
            session.commit()
        return read
    check_steps(settings, body.steps)
    dataset = get_dataset(session, body.dataset)
    if isinstance(body, PresetTeacherCreate):
        _check_preset(body, image_size(dataset, body.resolution))
    base = None
    if isinstance(body, PrunedTeacherCreate):
        base = get_usable_teacher(session, body.base_teacher, "base_teacher")
    teacher = Teacher(name=body.name, source=body.source, status="training", dataset=dataset,
                      preset=getattr(body, "preset", None), base_teacher=base,
                      prune_ratio=getattr(body, "prune_ratio", None))
    options = body.model_dump(include={*TRAIN_OPTION_FIELDS, "importance"})
    # A pruned copy waits for its base teacher like a distillation job waits for its teacher.
    job = Job(kind="teacher", status="queued", teacher=base, output_teacher=teacher, dataset=dataset, seed=body.seed,
              steps=body.steps, options=options)
    session.add_all([teacher, job])
    with unique_or_conflict(session, taken):
        session.flush()
        read = teacher_read(session, teacher)
        idempotency.record(claimed, 201, read, teacher.id)
        session.commit()
    wake_dispatcher(request)
    return read
