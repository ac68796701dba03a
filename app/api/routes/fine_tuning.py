"""OpenAI's `fine_tuning.jobs` as a view of our training jobs.

`POST /v1/fine_tuning/jobs` is `POST /v1/training-jobs` in OpenAI's words: `model` is the base
(`_base`), `training_file` and `validation_file` are dataset ids (what `POST /v1/files`
returns), `suffix` names the adapter the job trains, and `n_epochs`, `batch_size` and
`learning_rate_multiplier` (times the method's default rate) become our hyperparameters.
Anything OpenAI has no word for goes in an optional `switchyard` object (method, task, any
of our hyperparameters). Every training job, however it was submitted, is listed here too,
with its events and one checkpoint per evaluation.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import JobsDep, PrincipalDep, RegistryDep
from app.api.openai_schemas import (
    FineTuningCheckpoint,
    FineTuningCheckpointList,
    FineTuningEvent,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobList,
)
from app.api.routes.fine_tuning_views import checkpoint_view, event_view, job_view
from app.errors import bad_request, not_found
from app.runtime.admission import BASE_LABEL
from app.training.hyperparameters import default_learning_rate
from app.training.jobs import JobManager
from app.training.planning import JobRequest

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai"])
_MAX_JOBS = 10_000  # jobs scanned for an `after` cursor
_EVENT_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=100)]
T = TypeVar("T", FineTuningEvent, FineTuningCheckpoint)


class HyperparametersIn(BaseModel):
    """OpenAI's hyperparameters; "auto" leaves our data-driven default."""

    model_config = ConfigDict(extra="forbid")
    # The bounds sit on the number, not the union: "auto" has no order.
    n_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] | None = None
    batch_size: Annotated[int, Field(ge=1, le=512)] | Literal["auto"] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = None


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    """OpenAI's `method`; only `supervised` exists here."""

    model_config = ConfigDict(extra="forbid")
    type: str
    supervised: SupervisedIn | None = None


class SwitchyardOptions(BaseModel):
    """What OpenAI has no field for (send it with the SDK's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(
        "auto",
        description="auto (measure the candidates and keep the best), lora, prefix, prompt, "
        "ia3, linear_probe or contrastive",
    )
    task: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class FineTuningJobCreate(BaseModel):
    """`POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description=f"the base: {BASE_LABEL!r} (or the base's name)")
    training_file: str = Field(description="a dataset id, as `POST /v1/files` returns")
    validation_file: str | None = None
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: str | None = Field(None, description="the adapter's name; generated when omitted")
    seed: int | None = Field(None, ge=0)
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    switchyard: SwitchyardOptions | None = None


@router.post("", response_model=FineTuningJob)
def create_job(
    body: FineTuningJobCreate, jobs: JobsDep, registry: RegistryDep, principal: PrincipalDep
) -> FineTuningJob:
    """Check the job completely and queue it; a 4xx here means it would never have run."""
    if body.model not in (BASE_LABEL, registry.base.name):
        raise bad_request(
            "invalid_model",
            f"model {body.model!r} is not this service's base; fine-tuning starts from "
            f"{BASE_LABEL!r} and adds a version to the adapter named by `suffix`",
            param="model",
        )
    for field in ("integrations", "metadata"):
        if getattr(body, field):
            raise bad_request("unsupported_parameter", f"{field!r} is not supported", param=field)
    options = body.switchyard or SwitchyardOptions()
    adapter = body.suffix or f"ft-{secrets.token_hex(4)}"
    principal.check_adapter(adapter)
    request = JobRequest.parse(
        {
            "adapter": adapter,
            "method": options.method,
            "task": options.task,
            "training_data": body.training_file,
            "validation_data": body.validation_file,
            "hyperparameters": _hyperparameters(body, options),
        }
    )
    job = jobs.create(request)
    return job_view(job)


@router.get("", response_model=FineTuningJobList)
def list_jobs(jobs: JobsDep, after: str | None = None, limit: Limit = 20) -> FineTuningJobList:
    """Jobs, newest first; `after` is the last job id of the previous page."""
    items = jobs.list(limit=_MAX_JOBS)
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise not_found("job_not_found", f"no training job with id {after!r}", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return FineTuningJobList(data=[job_view(j) for j in page], has_more=len(items) > limit)


@router.get("/{job_id}", response_model=FineTuningJob)
def get_job(job_id: str, jobs: JobsDep) -> FineTuningJob:
    """One job."""
    return job_view(jobs.get(job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, jobs: JobsDep) -> FineTuningJob:
    """Stop a queued or running job; 409 once it has succeeded or failed."""
    return job_view(jobs.cancel(job_id))


@router.get("/{job_id}/events", response_model=FineTuningEventList)
def list_events(
    job_id: str, jobs: JobsDep, after: str | None = None, limit: Limit = 20
) -> FineTuningEventList:
    """The job's log, newest first; `after` is the last event id of the previous page."""
    events = [event_view(e) for e in _all_events(jobs, job_id)]
    page, more = _page(events, after, limit)
    return FineTuningEventList(data=page, has_more=more)


@router.get("/{job_id}/checkpoints", response_model=FineTuningCheckpointList)
def list_checkpoints(
    job_id: str, jobs: JobsDep, after: str | None = None, limit: Limit = 10
) -> FineTuningCheckpointList:
    """One checkpoint per evaluation, newest first; `best` marks the one registered."""
    job = jobs.get(job_id)
    evaluations = [e for e in _all_events(jobs, job_id) if e["kind"] == "evaluation"]
    checkpoints = [checkpoint_view(job, e) for e in evaluations]
    page, more = _page(checkpoints, after, limit)
    return FineTuningCheckpointList(
        data=page,
        has_more=more,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )


def _hyperparameters(body: FineTuningJobCreate, options: SwitchyardOptions) -> dict[str, Any]:
    given = body.hyperparameters
    if body.method is not None:
        if body.method.type != "supervised":
            raise bad_request(
                "unsupported_method",
                f"method type {body.method.type!r} is not supported; use 'supervised'",
                param="method.type",
            )
        if body.method.supervised and body.method.supervised.hyperparameters:
            given = body.method.supervised.hyperparameters
    hp = dict(options.hyperparameters)
    if given is not None:
        if isinstance(given.n_epochs, int):
            hp["epochs"] = given.n_epochs
        if isinstance(given.batch_size, int):
            hp["batch_size"] = given.batch_size
        if isinstance(given.learning_rate_multiplier, float | int):
            rate = given.learning_rate_multiplier * default_learning_rate(options.method)
            hp["learning_rate"] = rate
    if body.seed is not None:
        hp["seed"] = body.seed
    return hp


def _all_events(jobs: JobManager, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job, newest first (404 for an unknown job)."""
    events: list[dict[str, Any]] = []
    while True:
        batch = jobs.events(job_id, events[-1]["id"] if events else 0, _EVENT_PAGE)
        events += batch
        if len(batch) < _EVENT_PAGE:
            return events[::-1]


def _page(items: list[T], after: str | None, limit: int) -> tuple[list[T], bool]:
    """Items after the one with id `after` (newest first), at most `limit`, and whether more."""
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise not_found("not_found", f"no item with id {after!r} in this list", param="after")
        items = items[ids.index(after) + 1 :]
    return items[:limit], len(items) > limit
