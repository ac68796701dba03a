"""Typed return values of `app.client`. Every model keeps fields it does not know
(`extra="allow"`), so a newer server's additions reach the caller instead of failing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Residency = Literal["device", "cpu", "disk"]


class Record(BaseModel):
    """Base of every returned model: tolerant of fields it does not declare."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


# ---------------------------------------------------------------- adapters
class Adapter(Record):
    """A line of `GET /v1/adapters`: the latest version's metadata and residency."""

    name: str
    latest_version: int
    method: str | None = None
    task: str | None = None
    labels: list[str] = Field(default_factory=list)
    size_bytes: int = 0
    created_at: str | None = None
    resident: str | None = None
    pinned: bool = False


class AdapterVersion(Record):
    """One stored version (its switchyard.json): task, labels, method, lineage, metrics."""

    version: int
    name: str | None = None
    task: str | None = None
    method: str | None = None
    rank: int | None = None
    labels: list[str] = Field(default_factory=list)
    base_model: str | None = None
    base_fingerprint: str | None = None
    created_at: str | None = None
    size_bytes: int | None = None
    lineage: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


class AdapterDetails(Adapter):
    """`GET /v1/adapters/{name}`: the summary plus every version."""

    versions: list[AdapterVersion] = Field(default_factory=list)


class DeletedAdapter(Record):
    """`DELETE /v1/adapters/{name}`."""

    name: str
    deleted_versions: list[int]
    deleted_children: list[dict[str, Any]] = Field(default_factory=list)


# ---------------------------------------------------------------- datasets
class Dataset(Record):
    """An uploaded, validated dataset."""

    id: str
    name: str | None = None
    filename: str | None = None
    format: str | None = None
    rows: int = 0
    columns: list[str] = Field(default_factory=list)
    task: str | None = None
    label_counts: dict[str, int] | None = None
    bytes: int | None = None
    created_at: str | None = None


class Deleted(Record):
    """`DELETE /v1/datasets/{id}`."""

    id: str
    deleted: bool


# ---------------------------------------------------------------- training jobs
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class ErrorInfo(Record):
    """API.md's error body, as a failed job carries it."""

    code: str
    message: str
    param: str | None = None


class JobProgress(Record):
    """Where a job stands."""

    step: int | None = 0
    total_steps: int | None = None
    epoch: float | None = 0.0
    percent: float | None = 0.0
    eta_seconds: float | None = None


class JobResult(Record):
    """The version a succeeded job registered."""

    adapter: str
    version: int


class TrainingJob(Record):
    """A training job: status, progress, metrics per evaluation, best, result or error."""

    id: str
    adapter: str
    status: str
    task: str | None = None
    method: str | None = None
    training_data: str | None = None
    validation_data: str | None = None
    labels: list[str] = Field(default_factory=list)
    rows: dict[str, Any] = Field(default_factory=dict)
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: list[dict[str, Any]] = Field(default_factory=list)
    best: dict[str, Any] | None = None
    result: JobResult | None = None
    error: ErrorInfo | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def done(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.status in TERMINAL_STATUSES


class JobEvent(Record):
    """One entry of a job's log; the subclasses below type the known kinds."""

    id: int
    kind: str
    job_id: str | None = None
    created_at: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class LossEvent(JobEvent):
    """`loss`: the training loss at a step (null when it was not finite)."""

    kind: Literal["loss"] = "loss"

    @property
    def step(self) -> int | None:
        """The optimiser step."""
        value = self.data.get("step")
        return int(value) if isinstance(value, int | float) else None

    @property
    def loss(self) -> float | None:
        """The loss; None when it diverged (NaN is sent as null)."""
        value = self.data.get("loss")
        return float(value) if isinstance(value, int | float) else None


class EvaluationEvent(JobEvent):
    """`evaluation`: metrics on the validation rows at a step."""

    kind: Literal["evaluation"] = "evaluation"

    @property
    def step(self) -> int | None:
        """The optimiser step of this evaluation."""
        value = self.data.get("step")
        return int(value) if isinstance(value, int | float) else None

    @property
    def metrics(self) -> dict[str, float]:
        """The numeric metrics (step and epoch left out)."""
        skip = {"step", "epoch"}
        return {
            k: float(v)
            for k, v in self.data.items()
            if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)
        }


class InfoEvent(JobEvent):
    """`info`: a message from the trainer (early stop, LP-FT head fitting)."""

    kind: Literal["info"] = "info"

    @property
    def message(self) -> str:
        """The trainer's text."""
        return str(self.data.get("message", ""))


class StatusEvent(JobEvent):
    """`status`: the job moved to a new status (with its error or result when it ended)."""

    kind: Literal["status"] = "status"

    @property
    def status(self) -> str:
        """The new status."""
        return str(self.data.get("status", ""))

    @property
    def error(self) -> ErrorInfo | None:
        """The failure, for a failed job."""
        raw = self.data.get("error")
        return ErrorInfo.model_validate(raw) if isinstance(raw, dict) else None


_EVENT_TYPES: dict[str, type[JobEvent]] = {
    "loss": LossEvent,
    "evaluation": EvaluationEvent,
    "info": InfoEvent,
    "status": StatusEvent,
}


def parse_event(raw: Any) -> JobEvent:
    """The typed event for a log entry; an unknown kind stays a plain `JobEvent`."""
    kind = raw.get("kind") if isinstance(raw, dict) else None
    cls = _EVENT_TYPES.get(kind, JobEvent) if isinstance(kind, str) else JobEvent
    return cls.model_validate(raw)


class EventPage(Record):
    """`GET /v1/training-jobs/{id}/events`: events after a cursor, oldest first."""

    data: list[JobEvent]
    has_more: bool = False


# ---------------------------------------------------------------- inference
class Prediction(Record):
    """One adapter's pipeline-shaped outputs, one per input (API.md, "Inference")."""

    adapter: str
    version: int | None = None
    outputs: list[Any]


class MultiPrediction(Record):
    """`POST /v1/predict`: each adapter's prediction, by name."""

    results: dict[str, Prediction]


class Embedding(Record):
    """One input's vector."""

    index: int
    embedding: list[float] | str  # a base64 string when encoding_format is base64


class Usage(Record):
    """Token counts."""

    prompt_tokens: int = 0
    completion_tokens: int | None = None
    total_tokens: int | None = None


class Embeddings(Record):
    """`POST /v1/embeddings`."""

    data: list[Embedding]
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)


class CompletionChoice(Record):
    """One choice of `/v1/completions`."""

    index: int
    text: str
    finish_reason: str | None = None


class ChatMessage(Record):
    """A chat message."""

    role: str
    content: str | None = None


class ChatChoice(Record):
    """One choice of `/v1/chat/completions`."""

    index: int
    message: ChatMessage
    finish_reason: str | None = None


class Completion(Record):
    """`POST /v1/completions` (OpenAI's shape); a streamed chunk too, whose usage is null."""

    id: str
    model: str
    choices: list[CompletionChoice]
    created: int | None = None
    usage: Usage | None = None


class ChatCompletion(Record):
    """`POST /v1/chat/completions` (OpenAI's shape)."""

    id: str
    model: str
    choices: list[ChatChoice]
    created: int | None = None
    usage: Usage = Field(default_factory=Usage)


class ChatDelta(Record):
    """What one streamed chunk adds to the assistant's message."""

    role: str | None = None
    content: str | None = None


class ChatChunkChoice(Record):
    """One choice of a streamed chat chunk."""

    index: int
    delta: ChatDelta
    finish_reason: str | None = None


class ChatCompletionChunk(Record):
    """One server-sent chunk of `POST /v1/chat/completions` with `stream`."""

    id: str
    model: str
    choices: list[ChatChunkChoice]
    created: int | None = None
    usage: Usage | None = None


class ModelCard(Record):
    """`GET /v1/models/{id}`: the base (`_base`) or an adapter, with Switchyard's extension
    (kind, task, method, versions, base fingerprint, parent lineage) under `switchyard`."""

    id: str
    created: int | None = None
    owned_by: str | None = None
    switchyard: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- service
class BaseModelInfo(Record):
    """The frozen base the service runs."""

    name: str
    fingerprint: str
    kind: str | None = None
    parameters: int | None = None
    device: str | None = None
    dtype: str | None = None


class ServiceInfo(Record):
    """`GET /v1/info`: the base, supported methods and tasks, and limits."""

    base_model: BaseModelInfo
    methods: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    limits: dict[str, Any] = Field(default_factory=dict)


class Health(Record):
    """`/health/live` and `/health/ready`."""

    status: str
