"""/api/datasets: training sets by name: the embedded digits, and image folders under the datasets root.

A client names a sub-folder of LIFTPLACE_DATASETS_DIR; it never sends a path.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from liftplace import defaults
from server.api import READ, WRITE, SessionDep, SettingsDep, conflict, not_found, unique_or_conflict
from server.models import Dataset
from server.schemas import EMBEDDED_DATASETS, DatasetCreate, DatasetRead, invalid

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


def ensure_embedded_datasets(session: Session) -> None:
    """The embedded datasets are always registered (idempotent; run at start-up)."""
    for name in EMBEDDED_DATASETS:
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is None:
            session.add(Dataset(name=name, kind="embedded", folder=None, resolution=defaults.DIGITS_RESOLUTION,
                                description="sklearn's 8x8 digits, bundled (1,797 images)"))
    session.commit()


def _has_images(folder: Path) -> bool:
    images = (p for p in folder.rglob("*") if p.suffix.lower() in defaults.IMAGE_EXTENSIONS and p.is_file())
    return any(True for _ in islice(images, 1))


@router.get("", dependencies=READ, response_model=list[DatasetRead], summary="Registered datasets")
def list_datasets(session: SessionDep) -> list[DatasetRead]:
    return [DatasetRead.model_validate(d) for d in session.scalars(select(Dataset).order_by(Dataset.id))]


@router.get("/{name}", dependencies=READ, response_model=DatasetRead, summary="A registered dataset")
def get_dataset(name: str, session: SessionDep) -> DatasetRead:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise not_found("dataset", name)
    return DatasetRead.model_validate(dataset)


@router.post("", dependencies=WRITE, status_code=201, response_model=DatasetRead,
             summary="Register an image folder of the datasets root")
def register_dataset(body: DatasetCreate, session: SessionDep, settings: SettingsDep) -> DatasetRead:
    if session.scalar(select(Dataset.id).where(Dataset.name == body.name)) is not None:
        raise conflict(f"name: a dataset named {body.name!r} already exists")
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
    with unique_or_conflict(session, f"name: a dataset named {body.name!r} already exists"):
        session.commit()
    return DatasetRead.model_validate(dataset)
