"""Datasets: upload a JSONL, CSV or plain-text file (validated row by row), list, show, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import DatasetsDep
from app.api.responses import DatasetDeleted, DatasetList, DatasetOut
from app.training.textfile import SPLIT_RULE, SplitChoice

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", response_model=DatasetOut, status_code=201)
async def create_dataset(
    datasets: DatasetsDep,
    response: Response,
    file: Annotated[
        UploadFile,
        File(description="JSONL or CSV in API.md's row format, or plain text (unlabeled)"),
    ],
    name: Annotated[str | None, Form(description="defaults to the file name")] = None,
    split: Annotated[SplitChoice, Form(description=SPLIT_RULE)] = "auto",
) -> dict[str, Any]:
    """Validate an uploaded file and store it; 400 lists the first bad rows by line."""
    # The form parser spooled the file to disk; the service reads it from there, a text-only
    # one in bounded memory. The body limit (app/api/limits.py) already capped its size.
    created = await run_in_threadpool(
        datasets.upload, file.filename or "dataset", file.file, name=name, split=split
    )
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
