"""Response bodies of the native routes (API.md), so `/openapi.json` and `/docs` show them.

The routes still build plain dicts; FastAPI validates each through its route's model here and
writes it out, so a model must describe the body exactly or it would change it:
- A key that is always there is a required field. A key that only some records have (in a
  job's best checkpoint, selection, candidates, result) is a field with a default, and the
  routes serving it set `response_model_exclude_unset=True`, so a missing key stays missing
  rather than appearing as `null` (tests/unit/api/test_response_models.py checks the routes).
- Open-ended records (a job and its progress, best checkpoint and result, an adapter's
  metadata) allow extra keys, which pass through as they are; free-form values (metrics,
  hyperparameters, pipeline outputs) are `dict[str, Any]` or `Any`.
- `Number` keeps an int an int: a plain `float` field would write 3 as 3.0.
- Declared fields are written first, in declaration order, then the extra keys: the fields are
  declared in the order the producers write them.

The OpenAI-compatible routes have their own models in app/api/openai_schemas.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = float | int
Residency = Literal["device", "cpu", "disk"]
JobStatus = Literal["queued", "validating", "running", "succeeded", "failed", "cancelled"]
_OPEN = ConfigDict(extra="allow")


# ---------------------------------------------------------------- health and info
class LiveStatus(BaseModel):
    """`GET /health/live`: the process runs."""

    status: Literal["live"]


class ReadyStatus(BaseModel):
    """`GET /health/ready` once the base is loaded and warmed up (else a 503 error body)."""

    status: Literal["ready"]


class BaseInfo(BaseModel):
    """The frozen base model every adapter runs on."""

    name: str
    kind: Literal["encoder", "decoder"]
    architecture: str = Field(description="the transformers class, e.g. BertModel")
    fingerprint: str = Field(
        description="sha256 of the config and the weights in float32, whatever dtype serves "
        "them; adapters are bound to it"
    )
    parameters: int
    device: str
    dtype: str
    linear_kernels: str = Field(
        description="what the frozen linear layers compute in: the dtype, or int8"
    )
    hidden_size: int
    num_layers: int


class ServiceLimits(BaseModel):
    """The limits a caller must respect (the service's settings of the same names)."""

    max_rank: int
    max_upload_bytes: int
    max_body_bytes: int
    max_inputs_per_request: int
    max_input_tokens: int
    truncate_inputs: bool
    max_new_tokens: int
    max_prompt_tokens: int
    max_batch_size: int
    queue_size: int
    max_slots: int
    device_bytes: int
    cpu_bytes: int
    request_timeout_s: float


class ServiceInfo(BaseModel):
    """`GET /v1/info`: the base model, what it can do, and the limits."""

    base_model: BaseInfo
    methods: list[str] = Field(description="adapter methods this service loads")
    tasks: list[str] = Field(description="tasks this base serves")
    limits: ServiceLimits


# ---------------------------------------------------------------- adapters
class AdapterVersion(BaseModel):
    """One version's `switchyard.json`, as the store wrote it (`POST /v1/adapters` answers 201
    with it). A trained version adds `hyperparameters` and `training` (its best checkpoint and
    rows); an upload's own metadata may add `description`. Other keys pass through."""

    model_config = _OPEN

    # In the file's order (its keys are sorted).
    base_fingerprint: str
    base_model: str
    created_at: str
    labels: list[str] = Field(description="label names in head order")
    lineage: dict[str, Any] = Field(
        description="where it came from: `source` (upload or training), the job, the data"
    )
    method: str
    metrics: Any = Field(description="validation metrics, usually {name: value}")
    name: str
    rank: int = Field(description="LoRA rank; 0 for methods without one")
    task: str
    version: int


class StoredVersion(AdapterVersion):
    """One version in an adapter's details: its metadata and its size on disk."""

    size_bytes: int


class _AdapterHead(BaseModel):
    """What the list and the details share: the latest version's metadata."""

    name: str
    latest_version: int
    method: str | None
    task: str | None
    labels: list[str]
    size_bytes: int
    created_at: str | None
    pinned: bool


class AdapterSummary(_AdapterHead):
    """One adapter in the list (`GET /v1/adapters`), and the answer to a pin (`PATCH`)."""

    resident: Residency = Field(description="where the latest version is held now")


class AdapterList(BaseModel):
    """`GET /v1/adapters`: every adapter this key may use."""

    data: list[AdapterSummary]


class AdapterDetails(_AdapterHead):
    """`GET /v1/adapters/{name}`: the summary with every version's metadata."""

    versions: list[StoredVersion]
    resident: Residency = Field(description="where the latest version is held now")


class DeletedChild(BaseModel):
    """An adapter a cascading delete removed with its parent."""

    name: str
    deleted_versions: list[int]


class AdapterDeleted(BaseModel):
    """`DELETE /v1/adapters/{name}`: the versions removed."""

    name: str
    deleted_versions: list[int]
    deleted_children: list[DeletedChild] = Field(
        default_factory=list, description="with ?cascade=true: adapters stacked on it"
    )


# ---------------------------------------------------------------- inference
_OUTPUTS = (
    "one per input, shaped like the transformers pipeline of the adapter's task: "
    "[{label, score}] (classification), {score} (regression), "
    "[{entity_group, score, word, start, end}] (token classification), "
    "{generated_text} (generation)"
)


class PredictOut(BaseModel):
    """`POST /v1/adapters/{name}/predict`: the adapter version that answered, and its outputs."""

    adapter: str
    version: int
    outputs: list[Any] = Field(description=_OUTPUTS)


class BasePredictOut(BaseModel):
    """`POST /v1/adapters/_base/predict`: the bare base's generations."""

    adapter: Literal["_base"]
    version: None
    outputs: list[Any] = Field(description="one {generated_text} per input")


class MultiPredictOut(BaseModel):
    """`POST /v1/predict`: each adapter's answer, by adapter name."""

    results: dict[str, PredictOut]


# ---------------------------------------------------------------- datasets
class DatasetOut(BaseModel):
    """One uploaded, validated dataset."""

    id: str
    object: Literal["dataset"]
    name: str
    filename: str
    format: str = Field(description="jsonl, csv or text (plain text, unlabeled)")
    rows: int
    columns: list[str]
    task: str = Field(description="the task detected from the rows")
    label_counts: dict[str, int]
    bytes: int
    created_at: str


class DatasetList(BaseModel):
    """`GET /v1/datasets`: every dataset, newest first."""

    data: list[DatasetOut]


class DatasetDeleted(BaseModel):
    """`DELETE /v1/datasets/{id}`."""

    id: str
    object: Literal["dataset"]
    deleted: bool


# ---------------------------------------------------------------- training jobs
class JobRows(BaseModel):
    """How the job's rows were split."""

    train: int | None
    validation: int | None
    validation_source: str | None = Field(
        description="held_out (a split of the training data) or the dataset given"
    )


class JobProgress(BaseModel):
    """Where a job is; a finished job also says whether it `stopped_early`."""

    model_config = _OPEN

    step: int | None
    total_steps: int | None
    epoch: Number
    percent: Number
    eta_seconds: Number | None
    stopped_early: bool | None = None


class JobSelection(BaseModel):
    """How the run was judged: the rule, its folds and criterion, the steps planned and run."""

    model_config = _OPEN

    rule: str | None = Field(
        None, description="cross_validation, fixed, validation_loss or validation_metric"
    )
    folds: int | None = None
    criterion: str | None = None
    early_stopping: bool | None = None
    planned_steps: int | None = None
    steps: int | None = None
    stopped_early: bool | None = None
    method: str | None = Field(None, description="with method auto: the winner")


class JobCandidate(BaseModel):
    """One method that `auto` tried (or skipped), and its estimate."""

    model_config = _OPEN

    method: str | None = None
    metric: str | None = None
    value: Number | None = None
    seconds: Number | None = None
    status: str | None = Field(None, description="measured, or why it was skipped")
    chosen: bool | None = None


class JobBest(BaseModel):
    """The checkpoint the job kept. Runs add what picked it (`criterion`, a probe's `layers`
    and `C`, a calibration `temperature`), and a succeeded job its `metrics` and `selection`
    (as the job's own `selection`); those pass through in the order the run wrote them."""

    model_config = _OPEN

    step: int | None = None
    epoch: Number | None = None
    metric: str | None = Field(None, description="the metric that ranked the checkpoints")
    value: Number | None = None


class JobResult(BaseModel):
    """What a succeeded job registered."""

    model_config = _OPEN

    adapter: str | None = None
    version: int | None = None
    candidates: list[JobCandidate] | None = None


class JobError(BaseModel):
    """Why a job failed, in API.md's error shape."""

    model_config = _OPEN

    code: str
    message: str
    param: str | None


class TrainingJobOut(BaseModel):
    """A training job (`POST /v1/training-jobs` answers 202 with it)."""

    model_config = _OPEN

    id: str
    object: Literal["training_job"]
    adapter: str
    task: str
    method: str
    status: JobStatus
    training_data: str | None
    validation_data: str | None
    labels: list[str]
    rows: JobRows
    progress: JobProgress
    metrics: list[dict[str, Any]] = Field(description="one entry per evaluation")
    best: JobBest | None
    selection: JobSelection | None = Field(description="the best checkpoint's selection")
    candidates: list[JobCandidate] | None = Field(description="with method auto: every method")
    result: JobResult | None
    error: JobError | None
    hyperparameters: dict[str, Any] = Field(description="as given; the effective ones once run")
    base_adapter: dict[str, Any] | None = Field(
        None, description="the stored LoRA {adapter, version} this job stacks on"
    )
    domain_effect: dict[str, Any] | None = Field(
        None, description="with base_adapter: {with, without, metric} on the same rows"
    )
    created_at: str
    started_at: str | None
    finished_at: str | None


class TrainingJobList(BaseModel):
    """`GET /v1/training-jobs`: jobs, newest first."""

    data: list[TrainingJobOut]


class JobEventOut(BaseModel):
    """One line of a job's log: a status change, a loss, an evaluation, a message."""

    id: int
    job_id: str
    created_at: str
    kind: str = Field(description="status, loss, evaluation or info")
    data: dict[str, Any]


class JobEventList(BaseModel):
    """`GET /v1/training-jobs/{id}/events` without `stream`."""

    data: list[JobEventOut]
    has_more: bool
