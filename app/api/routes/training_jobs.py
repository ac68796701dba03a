"""Training jobs: submit (202), list, show, follow the log (JSON or server-sent events), cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.api.deps import JobsDep, PrincipalDep
from app.api.schemas import TrainingJobRequest

router = APIRouter(prefix="/v1/training-jobs", tags=["training"])


@router.post("", status_code=202)
def create_job(
    body: TrainingJobRequest, jobs: JobsDep, response: Response, principal: PrincipalDep
) -> dict[str, Any]:
    """Check the job completely and queue it; a 4xx here means it would never have run."""
    principal.check_adapter(body.adapter)
    job = jobs.create(body.model_dump())
    response.headers["Location"] = f"{router.prefix}/{job['id']}"
    return job


@router.get("")
def list_jobs(
    jobs: JobsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[str | None, Query(description="only jobs with this status")] = None,
) -> dict[str, Any]:
    """Jobs, newest first."""
    return {"data": jobs.list(limit=limit, status=status)}


@router.get("/{job_id}")
def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """Status, progress, metrics per evaluation, best checkpoint, result or error."""
    return jobs.get(job_id)


@router.get("/{job_id}/events", response_model=None)
async def job_events(
    job_id: str,
    jobs: JobsDep,
    request: Request,
    stream: bool = False,
    after: Annotated[int, Query(ge=0, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any] | StreamingResponse:
    """The job's log; `?stream=true` sends it as server-sent events until the job ends."""
    resume = request.headers.get("last-event-id", "")
    if resume.isdigit():  # a reconnecting EventSource continues where it stopped
        after = max(after, int(resume))
    if not stream:
        data = await run_in_threadpool(jobs.events, job_id, after, limit)
        return {"data": data, "has_more": len(data) == limit}
    await run_in_threadpool(jobs.get, job_id)  # a 404 must come before the stream starts
    return StreamingResponse(
        _server_sent(jobs.stream(job_id, after)),
        media_type="text/event-stream",
        # Proxies must pass events through as they come, not buffer or cache them.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """Stop a queued or running job; nothing it made is registered."""
    return jobs.cancel(job_id)


async def _server_sent(events: AsyncIterator[dict[str, Any] | None]) -> AsyncIterator[str]:
    async for item in events:
        if item is None:
            yield ": keep-alive\n\n"
            continue
        payload = json.dumps(item, separators=(",", ":"))
        yield f"id: {item['id']}\nevent: {item['kind']}\ndata: {payload}\n\n"
