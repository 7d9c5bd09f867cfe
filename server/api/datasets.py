"""/api/datasets: training sets by name: the embedded digits, and image folders under the datasets root.

A client names a sub-folder of LIFTPLACE_DATASETS_DIR; it never sends a path.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.api import READ, WRITE, SettingsDep, read, write
from server.schemas import DatasetCreate, DatasetRead
from server.services import datasets

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


@router.get("", dependencies=READ, response_model=list[DatasetRead], summary="Registered datasets")
async def list_datasets(request: Request) -> list[DatasetRead]:
    return await read(request, datasets.list_datasets)


@router.get("/{name}", dependencies=READ, response_model=DatasetRead, summary="A registered dataset")
async def get_dataset(name: str, request: Request) -> DatasetRead:
    return await read(request, datasets.read_dataset, name)


@router.post("", dependencies=WRITE, status_code=201, response_model=DatasetRead,
             summary="Register an image folder of the datasets root")
async def register_dataset(body: DatasetCreate, request: Request, settings: SettingsDep) -> DatasetRead:
    return await write(request, datasets.register_dataset, settings, body)
