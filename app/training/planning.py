"""From a training job's body to a TrainingPlan: shape checks, rows, labels, validation split.

The same code runs when a job is submitted (so a bad job is a 4xx at once) and again when a
worker starts it (from the persisted request, so a restart gives the very same plan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app.errors import SwitchyardError, bad_request
from app.methods import METHODS  # "auto", the default, is one (app/training/auto.py)
from app.registry.records import AdapterRef
from app.registry.store import check_name
from app.tasks import LANGUAGE_MODELING, canonical_task, get_task, head_rows
from app.training.datasets import DatasetService
from app.training.rows import derive_labels, detect_task, label_counts, validate_rows
from app.training.split import holdout_split
from app.training.stacking import task_rank
from app.training.types import TrainingPlan

MIN_ROWS_PER_CLASS = 2
# A job's base_adapter checked against the registry: the stored version it stacks on
# (app.training.stacking.check_parent bound to the registry, base and max_rank).
ParentCheck = Callable[..., AdapterRef]
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class JobRequest:
    """A training job's body, checked for shape; persisted as is and replayed by workers.

    The route builds it from the HTTP body (`parse`), the job manager stores it
    (`to_record`) and a worker reads it back (`from_record`): one record from the route to
    the plan. `hyperparameters` stay the JSON object the user gave: the dry run
    (app/training/preflight.py) parses them into `Hyperparameters`, on the base, in the
    order of its checks."""

    adapter: str
    method: str
    task: str | None = None
    training_data: str | None = None
    validation_data: str | None = None
    examples: Rows | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # A stored LoRA to train on top of (app/training/stacking.py); the version is the latest
    # at submission unless given, and is written back so a worker stacks on that one.
    base_adapter: str | None = None
    base_adapter_version: int | None = None

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> JobRequest:
        """Build from a JSON body (the API's pydantic model dumped, or the CLI's dict)."""
        if (body.get("training_data") is None) == (body.get("examples") is None):
            raise bad_request(
                "invalid_request",
                "give exactly one of training_data (a dataset id) or examples (inline rows)",
                param="training_data",
            )
        hyperparameters = body.get("hyperparameters") or {}
        if not isinstance(hyperparameters, dict):
            raise bad_request(
                "invalid_hyperparameter",
                "hyperparameters must be an object",
                param="hyperparameters",
            )
        examples = body.get("examples")
        if examples is not None and not isinstance(examples, list):
            raise bad_request(
                "invalid_request", "examples must be a list of rows", param="examples"
            )
        task = body.get("task")
        return cls(
            adapter=_adapter_name(body.get("adapter")),
            method=_method(body.get("method")),
            task=canonical_task(task) if task else None,
            training_data=body.get("training_data"),
            validation_data=body.get("validation_data"),
            examples=examples,
            hyperparameters=dict(hyperparameters),
            base_adapter=_base_adapter(body.get("base_adapter")),
            base_adapter_version=_version(body.get("base_adapter_version")),
        )

    @classmethod
    def from_record(cls, stored: Mapping[str, Any]) -> JobRequest:
        """The request as `to_record` stored it in the catalog."""
        return cls(**stored)

    def to_record(self, *, task: str) -> dict[str, Any]:
        """The JSON the catalog keeps, with the task the data resolved to."""
        return asdict(self) | {"task": task}


@dataclass(frozen=True)
class DataSummary:
    """What a job shows about its data: the labels and the rows on each side."""

    labels: list[str]
    train_rows: int
    validation_rows: int
    validation_source: str  # held_out | validation_data | training_rows

    def as_json(self) -> dict[str, Any]:
        """The job's stored `summary`."""
        return asdict(self)


@dataclass(frozen=True)
class PreparedJob:
    """A plan ready for the trainer, and what the job shows about its data."""

    plan: TrainingPlan
    summary: DataSummary


def prepare_job(
    request: JobRequest, datasets: DatasetService, *, max_training_rows: int
) -> PreparedJob:
    """Load and validate the rows, derive the labels (sorted), hold out a validation split."""
    if _streamed(request, datasets):
        return prepare_corpus_job(request, datasets)
    rows, task, param = _training_rows(request, datasets)
    if len(rows) > max_training_rows:
        raise bad_request(
            "too_many_rows", f"{len(rows)} training rows > limit {max_training_rows}", param=param
        )
    labels = derive_labels(rows, task)
    _check_labels(rows, task, labels, param)
    if request.validation_data is not None:
        validation = _validation_rows(request.validation_data, task, labels, datasets)
        source = "validation_data"
    elif task == LANGUAGE_MODELING:  # the trainer holds out whole documents of the corpus
        validation, source = [], "held_out"
    else:
        rows, validation = holdout_split(rows, task)
        source = "held_out"
    if not validation and task != LANGUAGE_MODELING:
        # Too few rows to spare any: evaluate on the training rows rather than on nothing.
        validation, source = list(rows), "training_rows"
    plan = TrainingPlan(
        adapter=request.adapter,
        task=task,
        method=request.method,
        train_rows=rows,
        validation_rows=validation,
        labels=labels,
        hyperparameters=request.hyperparameters,
        validation_source=source,
        base_adapter=_parent_ref(request),
    )
    summary = DataSummary(
        labels=labels,
        train_rows=len(rows),
        validation_rows=len(validation),
        validation_source=source,
    )
    return PreparedJob(plan, summary)


def _streamed(request: JobRequest, datasets: DatasetService) -> bool:
    """A language_modeling job on a dataset: its corpus is read lazily by the trainer."""
    if request.training_data is None:
        return False
    task = request.task or datasets.get(request.training_data, param="training_data")["task"]
    return canonical_task(task) == LANGUAGE_MODELING


def prepare_corpus_job(request: JobRequest, datasets: DatasetService) -> PreparedJob:
    """A plan naming the dataset's file instead of holding its rows: the trainer streams the
    documents and holds out its own slice (app/training/corpus.py). Rows were checked when
    the dataset was stored; `validation_data`, small by nature, is loaded and checked."""
    assert request.training_data is not None
    path = datasets.path_of(request.training_data, param="training_data")
    record = datasets.get(request.training_data, param="training_data")
    validation: Rows = []
    if request.validation_data is not None:
        raw = datasets.load_rows(request.validation_data, param="validation_data")
        validation = validate_rows(raw, LANGUAGE_MODELING, param="validation_data")
    source = "validation_data" if validation else "held_out"
    plan = TrainingPlan(
        adapter=request.adapter,
        task=LANGUAGE_MODELING,
        method=request.method,
        train_rows=[],
        validation_rows=validation,
        labels=[],
        hyperparameters=request.hyperparameters,
        validation_source=source,
        corpus=str(path),
    )
    summary = DataSummary([], int(record.get("rows") or 0), len(validation), source)
    return PreparedJob(plan, summary)


def _parent_ref(request: JobRequest) -> AdapterRef | None:
    """The version a job stacks on, once submission has resolved it (None before)."""
    if request.base_adapter is None or request.base_adapter_version is None:
        return None
    return AdapterRef(request.base_adapter, request.base_adapter_version)


def stack_on(
    request: JobRequest, prepared: PreparedJob, check: ParentCheck | None
) -> tuple[JobRequest, PreparedJob]:
    """Resolve and check a job's base_adapter; the version found is the one the job keeps."""
    if check is None:
        raise bad_request(
            "unsupported_base_adapter",
            "this service cannot stack adapters (no registry)",
            param="base_adapter",
        )
    plan = prepared.plan
    ref = check(
        name=request.base_adapter,
        version=request.base_adapter_version,
        task=plan.task,
        method=plan.method,
        rank=task_rank(plan.hyperparameters),
    )
    request = replace(request, base_adapter_version=ref.version)
    return request, replace(prepared, plan=replace(plan, base_adapter=ref))


def _check_labels(rows: Rows, task: str, labels: list[str], param: str) -> None:
    """A head can be made for the labels (classification needs two classes), and every class
    has a couple of rows: one example teaches the head a point, not a class, and leaves none
    to hold out for validation."""
    try:
        head_rows(task, labels)
    except SwitchyardError as exc:
        exc.param = param
        raise
    if not get_task(task).single_label:
        return
    small = {k: n for k, n in label_counts(rows, task).items() if n < MIN_ROWS_PER_CLASS}
    if small:
        listed = ", ".join(f"{k!r} ({n})" for k, n in list(small.items())[:10])
        raise bad_request(
            "too_few_rows",
            f"{len(small)} class(es) have fewer than {MIN_ROWS_PER_CLASS} rows: {listed}; "
            "add rows for them or drop them",
            param=param,
        )


def _adapter_name(value: Any) -> str:
    try:
        return check_name(value if isinstance(value, str) else repr(value))
    except SwitchyardError as exc:
        exc.param = "adapter"  # check_name says "name": here the field is `adapter`
        raise


def _base_adapter(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):  # repr(0) would pass as the name "0"
        raise bad_request(
            "invalid_name", f"base_adapter {value!r} is not an adapter name", param="base_adapter"
        )
    try:
        return check_name(value)
    except SwitchyardError as exc:
        exc.param = "base_adapter"
        raise


def _version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(
            "invalid_request",
            f"base_adapter_version {value!r} is not a version number (an integer >= 1)",
            param="base_adapter_version",
        )
    return value


def _method(value: Any) -> str:
    method = value or "auto"
    if method not in METHODS:
        raise bad_request(
            "invalid_method", f"method {method!r} is not one of {list(METHODS)}", param="method"
        )
    return str(method)


def _training_rows(request: JobRequest, datasets: DatasetService) -> tuple[Rows, str, str]:
    if request.training_data is not None:
        param = "training_data"
        raw = datasets.load_rows(request.training_data, param=param)
        task = request.task or datasets.get(request.training_data, param=param)["task"]
    else:
        param = "examples"
        raw = request.examples or []
        task = request.task or detect_task(raw)
    return validate_rows(raw, task, param=param), canonical_task(task), param


def _validation_rows(
    dataset_id: str, task: str, labels: list[str], datasets: DatasetService
) -> Rows:
    param = "validation_data"
    rows = validate_rows(datasets.load_rows(dataset_id, param=param), task, param=param)
    unknown = sorted(set(derive_labels(rows, task)) - set(labels))
    if unknown:
        raise bad_request(
            "label_mismatch",
            f"labels {unknown[:10]} of validation_data never occur in the training data",
            param=param,
        )
    return rows
