"""Teachers: register a local diffusers folder, or queue the training of a teacher.

- source "local": a sub-folder of LIFTPLACE_TEACHERS_DIR, checked to load as a UNet; ready at once.
- source "shipped": a teacher shipped with liftplace (`liftplace.shipped`), its file digests checked;
  ready at once. Jobs get it as ``shipped:NAME`` and every worker loads (and checks) its own copy.
- source "preset": a fresh teacher of a liftplace preset trained on a registered dataset.
- source "pruned": another teacher pruned at `prune_ratio` and retrained (the paper's smaller
  teachers). It waits for its base teacher if that one is still training.

Distillation jobs that name a teacher still in training are queued and wait for it.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from liftplace.models import LIFTPLACE_META_FILE
from server.errors import Conflict, NotFound
from server.models import Dataset, Job, Teacher
from server.schemas import (
    TRAIN_OPTION_FIELDS,
    LocalTeacherCreate,
    PresetTeacherCreate,
    PrunedTeacherCreate,
    ShippedTeacherCreate,
    TeacherCreate,
    TeacherRead,
    invalid,
)
from server.services.checks import check_steps, get_dataset, get_usable_teacher, image_size, unique_or_conflict
from server.settings import Settings
from worker.teacher_store import model_uri


def teacher_reads(session: Session, teachers: list[Teacher]) -> list[TeacherRead]:
    """The teachers with their latest training job's id (one query for all of them)."""
    ids = [t.id for t in teachers]
    jobs = dict(session.execute(select(Job.output_teacher_id, func.max(Job.id)).where(Job.output_teacher_id.in_(ids))
                                .group_by(Job.output_teacher_id)).all()) if ids else {}
    return [TeacherRead(
        id=t.id, name=t.name, source=t.source, status=t.status,  # type: ignore[arg-type]
        folder=t.folder, preset=t.preset, base_teacher=t.base_teacher.name if t.base_teacher else None,
        prune_ratio=t.prune_ratio, dataset=t.dataset.name if t.dataset else None, parameters=t.parameters,
        job_id=jobs.get(t.id), reason=t.reason, created_at=t.created_at,
        model_uri=model_uri(t.name, t.model_version) if t.model_version else None, model_digest=t.model_digest,
    ) for t in teachers]


def teacher_read(session: Session, teacher: Teacher) -> TeacherRead:
    return teacher_reads(session, [teacher])[0]


def list_teachers(session: Session) -> list[TeacherRead]:
    """Every registered teacher, oldest first."""
    teachers = session.scalars(select(Teacher).options(selectinload(Teacher.base_teacher),
                                                       selectinload(Teacher.dataset)).order_by(Teacher.id))
    return teacher_reads(session, list(teachers))


def read_teacher(session: Session, name: str) -> TeacherRead:
    teacher = session.scalar(select(Teacher).where(Teacher.name == name))
    if teacher is None:
        raise NotFound("teacher", name)
    return teacher_read(session, teacher)


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


def _shipped(session: Session, body: ShippedTeacherCreate) -> Teacher:
    """A ready teacher for a shipped one (digests checked; its size, recipe and dataset from its provenance)."""
    from liftplace.shipped import ShippedTeacherError, teacher_meta

    name = body.shipped or body.name
    field = "shipped" if body.shipped else "name"
    try:
        meta = teacher_meta(name)
    except ShippedTeacherError as exc:
        raise invalid(field, f"{field}: {exc}", name) from None
    made = meta.get("extra", {})
    job, base = made.get("job", {}), made.get("base_teacher")
    return Teacher(
        name=body.name, source="shipped", status="ready", folder=name, parameters=meta.get("parameters"),
        preset=job.get("preset"), prune_ratio=job.get("prune_ratio"),
        # the teacher it was pruned from and the dataset it learnt, when this service knows them by those names
        base_teacher=session.scalar(select(Teacher).where(Teacher.name == base)) if base else None,
        dataset=session.scalar(select(Dataset).where(Dataset.name == job.get("dataset_name"))),
    )


def _check_preset(body: PresetTeacherCreate, size: int) -> None:
    from liftplace.presets import TEACHER_PRESETS

    factor = 2 ** (len(TEACHER_PRESETS[body.preset].block_out_channels) - 1)
    if size % factor != 0:
        raise invalid("preset", f"preset: {body.preset!r} halves the image {factor // 2 or 1} time(s) down to "
                                f"1/{factor}; a {size}x{size} image does not divide (choose another preset or a "
                                "resolution)", body.preset)


def _training(session: Session, settings: Settings, body: PresetTeacherCreate | PrunedTeacherCreate) -> Teacher:
    """A teacher in training and the queued job that trains it (added, not flushed)."""
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
    return teacher


def create_teacher(session: Session, settings: Settings, body: TeacherCreate) -> TeacherRead:
    """Register a local or shipped teacher (ready), or a teacher in training and its job (flushed, not committed)."""
    taken = f"name: a teacher named {body.name!r} already exists"
    if session.scalar(select(Teacher.id).where(Teacher.name == body.name)) is not None:
        raise Conflict(taken)
    if isinstance(body, LocalTeacherCreate):
        folder, parameters = _local_parameters(settings, body)
        teacher = Teacher(name=body.name, source="local", status="ready", folder=folder, parameters=parameters)
        session.add(teacher)
    elif isinstance(body, ShippedTeacherCreate):
        teacher = _shipped(session, body)
        session.add(teacher)
    else:
        teacher = _training(session, settings, body)
    with unique_or_conflict(session, taken):
        session.flush()
    return teacher_read(session, teacher)
