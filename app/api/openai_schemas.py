"""Response bodies of the OpenAI-compatible routes, shaped as the official `openai` SDK reads them.

Each keeps OpenAI's field names and adds what is Switchyard's under a `switchyard` key, so a
plain SDK client sees what it expects and a Switchyard-aware one finds the rest.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

Auto = Literal["auto"]


# ---------------------------------------------------------------- models
class ModelVersion(BaseModel):
    """One stored version of an adapter and where it came from."""

    version: int
    created: int = Field(description="unix seconds")
    method: str | None = None
    parent: Any = Field(None, description="the lineage's parent (adapter and version), if any")
    lineage: dict[str, Any] = Field(default_factory=dict)


class ModelExtension(BaseModel):
    """What the SDK has no field for: task, method, versions, base and lineage."""

    kind: Literal["base", "adapter"]
    task: str | None = None
    method: str | None = None
    labels: list[str] = Field(default_factory=list)
    latest_version: int | None = None
    versions: list[ModelVersion] = Field(default_factory=list)
    base_model: str
    base_fingerprint: str
    parent: Any = Field(None, description="the latest version's parent")


class Model(BaseModel):
    """`GET /v1/models/{id}`: the base (`_base`) or an adapter (its name)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="unix seconds")
    owned_by: str
    switchyard: ModelExtension


class ModelList(BaseModel):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[Model]


# ---------------------------------------------------------------- embeddings
class Embedding(BaseModel):
    """One input's vector: floats, or base64 of little-endian float32 bytes."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """`POST /v1/embeddings`."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ---------------------------------------------------------------- completions
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(BaseModel):
    """`POST /v1/completions`; with `stream` each SSE chunk has this shape too."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletion(BaseModel):
    """`POST /v1/chat/completions` without `stream`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One SSE chunk of `POST /v1/chat/completions` with `stream`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# ---------------------------------------------------------------- fine-tuning
class FineTuningHyperparameters(BaseModel):
    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"


class FineTuningError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, Any] = Field(default_factory=dict)


class FineTuningExtension(BaseModel):
    """Our job as `GET /v1/training-jobs/{id}` shows it, in brief."""

    adapter: str
    task: str | None
    method: str
    status: str
    progress: dict[str, Any]
    metrics: list[dict[str, Any]]
    best: dict[str, Any] | None
    result: dict[str, Any] | None


class FineTuningJob(BaseModel):
    """`GET /v1/fine_tuning/jobs/{id}`: one of our training jobs, as OpenAI shapes a job."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    error: FineTuningError | None
    fine_tuned_model: str | None
    hyperparameters: FineTuningHyperparameters
    method: FineTuningMethod
    model: str
    organization_id: str = "switchyard"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str | None
    validation_file: str | None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    switchyard: FineTuningExtension


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningEvent(BaseModel):
    """One line of a job's log."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class FineTuningEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningEvent]
    has_more: bool


class FineTuningCheckpoint(BaseModel):
    """One evaluation of a job; the best one is what the job registered."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float | None]
    best: bool = False


class FineTuningCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# ---------------------------------------------------------------- files
class FileObject(BaseModel):
    """`POST /v1/files`: an uploaded dataset (its id is the dataset id)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed"] = "processed"
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


def unix_seconds(stamp: str | None) -> int | None:
    """An ISO 8601 time (as the catalog stores them) in unix seconds; None stays None."""
    if not stamp:
        return None
    # Python 3.10's fromisoformat does not read a trailing Z.
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:  # the catalog's times are UTC
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())
