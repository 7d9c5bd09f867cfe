"""/api/datasets: training sets by name: the embedded digits, and image folders under the datasets root.

A client names a sub-folder of LIFTPLACE_DATASETS_DIR; it never sends a path.
"""

from __future__ import annotations

from fastapi import APIRouter

from server.api import READ, WRITE, SessionDep, SettingsDep
from server.schemas import DatasetCreate, DatasetRead
from server.services import datasets

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


@router.get("", dependencies=READ, response_model=list[DatasetRead], summary="Registered datasets")
def list_datasets(session: SessionDep) -> list[DatasetRead]:
    return datasets.list_datasets(session)


@router.get("/{name}", dependencies=READ, response_model=DatasetRead, summary="A registered dataset")
def get_dataset(name: str, session: SessionDep) -> DatasetRead:
    return datasets.read_dataset(session, name)


@router.post("", dependencies=WRITE, status_code=201, response_model=DatasetRead,
             summary="Register an image folder of the datasets root")
def register_dataset(body: DatasetCreate, session: SessionDep, settings: SettingsDep) -> DatasetRead:
    dataset = datasets.register_dataset(session, settings, body)
    session.commit()
    return DatasetRead.model_validate(dataset)
