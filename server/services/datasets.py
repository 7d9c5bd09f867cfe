"""Datasets by name: the embedded digits, and image folders under the datasets root.

A client names a sub-folder of LIFTPLACE_DATASETS_DIR; it never sends a path.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from liftplace import defaults
from server.errors import Conflict, NotFound
from server.models import Dataset
from server.schemas import EMBEDDED_DATASETS, DatasetCreate, DatasetRead, invalid
from server.services.checks import unique_or_conflict
from server.settings import Settings


def ensure_embedded_datasets(session: Session) -> None:
    """The embedded datasets are always registered (idempotent; run at start-up; commits)."""
    for name in EMBEDDED_DATASETS:
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is None:
            session.add(Dataset(name=name, kind="embedded", folder=None, resolution=defaults.DIGITS_RESOLUTION,
                                description="sklearn's 8x8 digits, bundled (1,797 images)"))
    session.commit()


def _has_images(folder: Path) -> bool:
    images = (p for p in folder.rglob("*") if p.suffix.lower() in defaults.IMAGE_EXTENSIONS and p.is_file())
    return any(True for _ in islice(images, 1))


def list_datasets(session: Session) -> list[DatasetRead]:
    return [DatasetRead.model_validate(d) for d in session.scalars(select(Dataset).order_by(Dataset.id))]


def read_dataset(session: Session, name: str) -> DatasetRead:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFound("dataset", name)
    return DatasetRead.model_validate(dataset)


def register_dataset(session: Session, settings: Settings, body: DatasetCreate) -> DatasetRead:
    """Register an image folder of the datasets root (flushed, not committed)."""
    taken = f"name: a dataset named {body.name!r} already exists"
    if session.scalar(select(Dataset.id).where(Dataset.name == body.name)) is not None:
        raise Conflict(taken)
    folder = body.folder or body.name
    field = "folder" if body.folder else "name"
    try:
        path = settings.dataset_folder(folder)
    except ValueError as exc:
        raise invalid(field, f"{field}: {exc}", folder) from None
    if not path.is_dir():
        raise invalid(field, f"{field}: no folder {folder!r} in the datasets root (LIFTPLACE_DATASETS_DIR)", folder)
    if not _has_images(path):
        raise invalid(field, f"{field}: the folder {folder!r} holds no {'/'.join(defaults.IMAGE_EXTENSIONS)} images",
                      folder)
    dataset = Dataset(name=body.name, kind="folder", folder=folder, resolution=body.resolution,
                      description=body.description)
    session.add(dataset)
    with unique_or_conflict(session, taken):
        session.flush()
    return DatasetRead.model_validate(dataset)
