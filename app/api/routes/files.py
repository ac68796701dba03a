"""OpenAI's `files` for fine-tuning: a file is one of our datasets, under the same id.

`client.files.create(file=..., purpose="fine-tune")` uploads JSONL (or CSV) in our row format,
which includes OpenAI's chat rows (`{"messages": [...]}`), or plain text (unlabeled), validated
and stored as `POST /v1/datasets` does; the returned id is what
`fine_tuning.jobs.create(training_file=...)` takes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import DatasetsDep
from app.api.openai_schemas import FileDeleted, FileList, FileObject, unix_seconds
from app.errors import bad_request
from app.training.textfile import SPLIT_RULE, SplitChoice

router = APIRouter(prefix="/v1/files", tags=["openai"])
PURPOSE = "fine-tune"


@router.post("", response_model=FileObject)
async def create_file(
    datasets: DatasetsDep,
    file: Annotated[
        UploadFile, File(description="JSONL or CSV rows (API.md's row format), or plain text")
    ],
    purpose: Annotated[str, Form(description="'fine-tune'")],
    split: Annotated[SplitChoice, Form(description=SPLIT_RULE)] = "auto",
) -> FileObject:
    """Validate and store the rows as a dataset; 400 lists the first bad rows by line."""
    if purpose != PURPOSE:
        raise bad_request(
            "unsupported_purpose",
            f"purpose {purpose!r} is not supported; files here are for {PURPOSE!r}",
            param="purpose",
        )
    created = await run_in_threadpool(
        datasets.upload, file.filename or "dataset", file.file, split=split
    )
    return file_view(created)


@router.get("", response_model=FileList)
def list_files(datasets: DatasetsDep) -> FileList:
    """Every dataset, newest first."""
    return FileList(data=[file_view(d) for d in datasets.list()])


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, datasets: DatasetsDep) -> FileObject:
    """One dataset as a file."""
    return file_view(datasets.get(file_id, param="file_id"))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, datasets: DatasetsDep) -> FileDeleted:
    """Remove the dataset."""
    datasets.get(file_id, param="file_id")  # 404 names the field
    deleted = datasets.delete(file_id)
    return FileDeleted(id=file_id, deleted=bool(deleted.get("deleted")))


def file_view(dataset: dict[str, Any]) -> FileObject:
    """A dataset's JSON as an OpenAI file object."""
    return FileObject(
        id=dataset["id"],
        bytes=int(dataset.get("bytes") or 0),
        created_at=unix_seconds(dataset.get("created_at")) or 0,
        filename=str(dataset.get("filename") or dataset.get("name") or dataset["id"]),
        status_details=f"{dataset.get('rows')} rows, task {dataset.get('task')}",
    )
