"""Every endpoint as a `Call`: path, body and the typed model its answer becomes. The sync and
async clients send these, so both speak the same API by construction."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from app.client import _files
from app.client._transport import Call, body, checked
from app.client.models import (
    Adapter,
    AdapterDetails,
    AdapterVersion,
    ChatCompletion,
    Completion,
    Dataset,
    Deleted,
    DeletedAdapter,
    Embeddings,
    EventPage,
    Health,
    ModelCard,
    MultiPrediction,
    Prediction,
    ServiceInfo,
    TrainingJob,
    parse_event,
)

M = TypeVar("M", bound=BaseModel)
Input = str | Mapping[str, Any]
Rows = Iterable[Mapping[str, Any]]


def _one(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: cls.model_validate(body(response))


def _many(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda response: [cls.model_validate(x) for x in body(response)["data"]]


def _seg(value: str) -> str:
    # Names go into the path: quoting keeps `../x` or `a/b` a (rejected) name, not a route.
    return quote(str(value), safe="")


def _events(response: httpx.Response) -> EventPage:
    raw = body(response)
    return EventPage(data=[parse_event(e) for e in raw["data"]], has_more=raw.get("has_more"))


def _without_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- service
def info() -> Call[ServiceInfo]:
    """`GET /v1/info`."""
    return Call("GET", "/v1/info", _one(ServiceInfo))


def health(which: str) -> Call[Health]:
    """`GET /health/live` or `/health/ready` (503 raises while loading or draining)."""
    return Call("GET", f"/health/{_seg(which)}", _one(Health))


def metrics() -> Call[str]:
    """`GET /metrics`: Prometheus text."""
    return Call("GET", "/metrics", lambda r: checked(r).text)


# ---------------------------------------------------------------- adapters
def list_adapters() -> Call[list[Adapter]]:
    """`GET /v1/adapters`."""
    return Call("GET", "/v1/adapters", _many(Adapter))


def get_adapter(name: str) -> Call[AdapterDetails]:
    """`GET /v1/adapters/{name}`."""
    return Call("GET", f"/v1/adapters/{_seg(name)}", _one(AdapterDetails))


def upload_adapter(
    name: str, folder: Path, *, task: str | None, labels: Sequence[str] | None
) -> Call[AdapterVersion]:
    """`POST /v1/adapters` (multipart) from a PEFT folder."""
    data = _without_none(name=name, task=task)
    if labels is not None:
        data["labels"] = json.dumps(list(labels))
    return Call(
        "POST",
        "/v1/adapters",
        _one(AdapterVersion),
        data=data,
        files=_files.adapter_parts(folder),
    )


def download_adapter(name: str, version: int | None) -> Call[bytes]:
    """`GET /v1/adapters/{name}/download`: the zip's bytes."""
    return Call(
        "GET",
        f"/v1/adapters/{_seg(name)}/download",
        lambda r: checked(r).content,
        params={"version": version},
    )


def delete_adapter(
    name: str, version: int | None, *, cascade: bool = False
) -> Call[DeletedAdapter]:
    """`DELETE /v1/adapters/{name}` (`?cascade=true` only when asked)."""
    params = {"version": version, "cascade": True if cascade else None}
    return Call("DELETE", f"/v1/adapters/{_seg(name)}", _one(DeletedAdapter), params=params)


def pin_adapter(name: str, pinned: bool) -> Call[Adapter]:
    """`PATCH /v1/adapters/{name}` with `{"pinned": ...}`."""
    return Call("PATCH", f"/v1/adapters/{_seg(name)}", _one(Adapter), json={"pinned": pinned})


# ---------------------------------------------------------------- datasets
def upload_dataset(
    source: Path | str | Rows, *, name: str | None, filename: str | None
) -> Call[Dataset]:
    """`POST /v1/datasets` from a local JSONL/CSV path, or from rows (sent as JSONL)."""
    if isinstance(source, str | Path):
        part = _files.dataset_part(Path(source))
    else:
        data = _files.rows_jsonl(source)
        part = ("file", (filename or f"{name or 'rows'}.jsonl", data, "application/jsonl"))
    return Call("POST", "/v1/datasets", _one(Dataset), data=_without_none(name=name), files=[part])


def list_datasets() -> Call[list[Dataset]]:
    """`GET /v1/datasets`."""
    return Call("GET", "/v1/datasets", _many(Dataset))


def get_dataset(dataset_id: str) -> Call[Dataset]:
    """`GET /v1/datasets/{id}`."""
    return Call("GET", f"/v1/datasets/{_seg(dataset_id)}", _one(Dataset))


def delete_dataset(dataset_id: str) -> Call[Deleted]:
    """`DELETE /v1/datasets/{id}`."""
    return Call("DELETE", f"/v1/datasets/{_seg(dataset_id)}", _one(Deleted))


# ---------------------------------------------------------------- training jobs
def create_job(
    adapter: str,
    *,
    training_data: str | None,
    examples: Rows | None,
    validation_data: str | None,
    task: str | None,
    method: str,
    hyperparameters: Mapping[str, Any] | None,
) -> Call[TrainingJob]:
    """`POST /v1/training-jobs`."""
    payload = _without_none(
        adapter=adapter,
        method=method,
        task=task,
        training_data=training_data,
        validation_data=validation_data,
        examples=[dict(row) for row in examples] if examples is not None else None,
        hyperparameters=dict(hyperparameters) if hyperparameters else None,
    )
    return Call("POST", "/v1/training-jobs", _one(TrainingJob), json=payload)


def get_job(job_id: str) -> Call[TrainingJob]:
    """`GET /v1/training-jobs/{id}`."""
    return Call("GET", f"/v1/training-jobs/{_seg(job_id)}", _one(TrainingJob))


def list_jobs(limit: int, status: str | None) -> Call[list[TrainingJob]]:
    """`GET /v1/training-jobs`, newest first."""
    return Call(
        "GET",
        "/v1/training-jobs",
        _many(TrainingJob),
        params={"limit": limit, "status": status},
    )


def cancel_job(job_id: str) -> Call[TrainingJob]:
    """`POST /v1/training-jobs/{id}/cancel`."""
    return Call("POST", f"/v1/training-jobs/{_seg(job_id)}/cancel", _one(TrainingJob))


def job_events(job_id: str, after: int, limit: int) -> Call[EventPage]:
    """`GET /v1/training-jobs/{id}/events` (the JSON page, not the stream)."""
    return Call(
        "GET",
        f"/v1/training-jobs/{_seg(job_id)}/events",
        _events,
        params={"after": after, "limit": limit},
    )


def stream_events(job_id: str, after: int) -> Call[None]:
    """The server-sent events of a job after event `after`; read by `follow`, never parsed whole."""
    path = f"/v1/training-jobs/{_seg(job_id)}/events"
    return Call("GET", path, _no_body, params={"stream": "true", "after": after})


def _no_body(_response: httpx.Response) -> None:
    return None


# ---------------------------------------------------------------- inference
def predict(
    name: str, inputs: Sequence[Input], parameters: Mapping[str, Any] | None, version: int | None
) -> Call[Prediction]:
    """`POST /v1/adapters/{name}/predict`."""
    payload = {"inputs": [_input(x) for x in inputs], "parameters": dict(parameters or {})}
    return Call(
        "POST",
        f"/v1/adapters/{_seg(name)}/predict",
        _one(Prediction),
        params={"version": version},
        json=payload,
    )


def predict_many(
    adapters: Sequence[str], inputs: Sequence[Input], parameters: Mapping[str, Any] | None
) -> Call[MultiPrediction]:
    """`POST /v1/predict`: several adapters over the same inputs."""
    payload = {
        "adapters": list(adapters),
        "inputs": [_input(x) for x in inputs],
        "parameters": dict(parameters or {}),
    }
    return Call("POST", "/v1/predict", _one(MultiPrediction), json=payload)


def list_models() -> Call[list[ModelCard]]:
    """`GET /v1/models` (OpenAI's shape): the base, then every adapter."""
    return Call("GET", "/v1/models", _many(ModelCard))


def get_model(model_id: str) -> Call[ModelCard]:
    """`GET /v1/models/{id}`."""
    return Call("GET", f"/v1/models/{_seg(model_id)}", _one(ModelCard))


def _input(value: Input) -> Any:
    return value if isinstance(value, str) else dict(value)


def embed(input: str | Sequence[str], options: Mapping[str, Any]) -> Call[Embeddings]:
    """`POST /v1/embeddings` (options: adapter, model, layers, pooling, normalize, ...)."""
    text = input if isinstance(input, str) else list(input)
    payload = {"input": text, **{k: v for k, v in options.items() if v is not None}}
    return Call("POST", "/v1/embeddings", _one(Embeddings), json=payload)


def complete(prompt: str | Sequence[str], options: Mapping[str, Any]) -> Call[Completion]:
    """`POST /v1/completions` (options: model, max_tokens, temperature, top_p, stop, seed)."""
    text = prompt if isinstance(prompt, str) else list(prompt)
    payload = {"prompt": text, **{k: v for k, v in options.items() if v is not None}}
    return Call("POST", "/v1/completions", _one(Completion), json=payload)


def chat(messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any]) -> Call[ChatCompletion]:
    """`POST /v1/chat/completions` (options as for `complete`)."""
    payload = {
        "messages": [dict(m) for m in messages],
        **{k: v for k, v in options.items() if v is not None},
    }
    return Call("POST", "/v1/chat/completions", _one(ChatCompletion), json=payload)
