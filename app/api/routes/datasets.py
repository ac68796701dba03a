"""Datasets: upload a JSONL or CSV file (validated row by row), list, show, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import DatasetsDep
from app.api.responses import DatasetDeleted, DatasetList, DatasetOut

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", response_model=DatasetOut, status_code=201)
async def create_dataset(
    datasets: DatasetsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="a JSONL or CSV file in API.md's row format")],
    name: Annotated[str | None, Form(description="defaults to the file name")] = None,
) -> dict[str, Any]:
    """Validate an uploaded file and store it; 400 lists the first bad rows by line."""
    # One byte over the limit is enough to know it is too big without reading all of it.
    data = await file.read(datasets.settings.max_dataset_bytes + 1)
    created = await run_in_threadpool(datasets.create, file.filename or "dataset", data, name)
    response.headers["Location"] = f"{router.prefix}/{created['id']}"
    return created


@router.get("", response_model=DatasetList)
def list_datasets(datasets: DatasetsDep) -> dict[str, Any]:
    """Every dataset, newest first."""
    return {"data": datasets.list()}


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, datasets: DatasetsDep) -> dict[str, Any]:
    """One dataset: rows, columns, detected task, label counts."""
    return datasets.get(dataset_id)


@router.delete("/{dataset_id}", response_model=DatasetDeleted)
def delete_dataset(dataset_id: str, datasets: DatasetsDep) -> dict[str, Any]:
    """Remove a dataset and its rows."""
    return datasets.delete(dataset_id)
