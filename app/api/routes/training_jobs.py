"""Training jobs: submit (202), list, show, follow the log (JSON or server-sent events), cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool

from app.api.deps import JobsDep, PrincipalDep
from app.api.responses import JobEventList, TrainingJobList, TrainingJobOut
from app.api.schemas import TrainingJobRequest
from app.training.planning import JobRequest

router = APIRouter(prefix="/v1/training-jobs", tags=["training"])
_EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream=true` server-sent events (`id`, `event` is the "
        "kind, `data` the event's JSON) until the job ends",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


# A job's progress, best checkpoint and result hold keys that only some runs write: the models
# declare them optional, and `response_model_exclude_unset` keeps a missing key missing (a
# default would otherwise appear as null).
@router.post("", response_model=TrainingJobOut, status_code=202, response_model_exclude_unset=True)
def create_job(
    body: TrainingJobRequest, jobs: JobsDep, response: Response, principal: PrincipalDep
) -> dict[str, Any]:
    """Check the job completely and queue it; a 4xx here means it would never have run."""
    principal.check_adapter(body.adapter)
    job = jobs.create(JobRequest.parse(body.model_dump()))
    response.headers["Location"] = f"{router.prefix}/{job['id']}"
    return job


@router.get("", response_model=TrainingJobList, response_model_exclude_unset=True)
def list_jobs(
    jobs: JobsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[str | None, Query(description="only jobs with this status")] = None,
) -> dict[str, Any]:
    """Jobs, newest first."""
    return {"data": jobs.list(limit=limit, status=status)}


@router.get("/{job_id}", response_model=TrainingJobOut, response_model_exclude_unset=True)
def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """Status, progress, metrics per evaluation, best checkpoint, result or error."""
    return jobs.get(job_id)


@router.get("/{job_id}/events", response_model=JobEventList, responses=_EVENT_STREAM)
async def job_events(
    job_id: str,
    jobs: JobsDep,
    request: Request,
    stream: bool = False,
    after: Annotated[int, Query(ge=0, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> JSONResponse | EventSourceResponse:
    """The job's log; `?stream=true` sends it as server-sent events until the job ends."""
    resume = request.headers.get("last-event-id", "")
    if resume.isdigit():  # a reconnecting EventSource continues where it stopped
        after = max(after, int(resume))
    if not stream:
        data = await run_in_threadpool(jobs.events, job_id, after, limit)
        # A JSONResponse, as before the model was declared: json.dumps writes floats as Python
        # does (a loss of 1e-05), where the model's serializer would write 0.00001.
        return JSONResponse({"data": data, "has_more": len(data) == limit})
    await run_in_threadpool(jobs.get, job_id)  # a 404 must come before the stream starts
    return EventSourceResponse(
        _server_sent(jobs.stream(job_id, after)),
        # Proxies must pass events through as they come, not buffer or cache them.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/{job_id}/cancel", response_model=TrainingJobOut, response_model_exclude_unset=True)
def cancel_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """Stop a queued or running job; nothing it made is registered."""
    return jobs.cancel(job_id)


async def _server_sent(events: AsyncIterator[dict[str, Any] | None]) -> AsyncIterator[bytes]:
    async for item in events:
        if item is None:
            yield format_sse_event(comment="keep-alive")
            continue
        payload = json.dumps(item, separators=(",", ":"))
        # `id:` first, as this stream always sent it: FastAPI's formatter writes it last.
        yield f"id: {item['id']}\n".encode() + format_sse_event(
            event=item["kind"], data_str=payload
        )
