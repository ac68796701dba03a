"""`Client`: the blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel

from app.client import _calls, _files
from app.client._calls import Input, Rows
from app.client._transport import (
    DEFAULT_TIMEOUT_S,
    STREAM_BREAKS,
    STREAM_DONE,
    Call,
    RetryPolicy,
    checked,
    chunk_from_sse,
    event_from_sse,
)
from app.client._transport import headers as default_headers
from app.client.config import resolve_key, resolve_url
from app.client.errors import APIConnectionError, APITimeoutError
from app.client.models import (
    Adapter,
    AdapterDetails,
    AdapterVersion,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    Dataset,
    Deleted,
    DeletedAdapter,
    Embeddings,
    EventPage,
    Health,
    JobEvent,
    ModelCard,
    MultiPrediction,
    Prediction,
    ServiceInfo,
    TrainingJob,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Client:
    """A blocking client of one Switchyard service; see the package docstring for an example.

    `base_url` and `api_key` default to `SWITCHYARD_URL` and `SWITCHYARD_KEY`. 429 and 503
    answers are retried as `retry` says (Retry-After honoured); every other error raises a
    `SwitchyardAPIError` subclass. Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_url(base_url)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(resolve_key(api_key)),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ---------------------------------------------------------------- sending
    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            response = self._request(call)
            delay = self.retry.delay(response, attempt)
            if delay is None:
                return call.parse(response)
            time.sleep(delay)
            attempt += 1

    def _request(self, call: Call[Any]) -> httpx.Response:
        try:
            return self._http.request(call.method, call.path, **call.send_kwargs())
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"{call.method} {call.path}: no answer in time") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{call.method} {call.path}: {exc}") from exc

    # ---------------------------------------------------------------- service
    def info(self) -> ServiceInfo:
        """The base model, supported methods and tasks, and limits."""
        return self._send(_calls.info())

    def live(self) -> Health:
        """200 while the process runs."""
        return self._send(_calls.health("live"))

    def ready(self) -> Health:
        """Ready to serve; raises ServiceUnavailableError (after retries) while not."""
        return self._send(_calls.health("ready"))

    def metrics(self) -> str:
        """Prometheus text."""
        return self._send(_calls.metrics())

    # ---------------------------------------------------------------- adapters
    def list_adapters(self) -> list[Adapter]:
        """Every adapter this key may use, with its latest version and residency."""
        return self._send(_calls.list_adapters())

    def get_adapter(self, name: str) -> AdapterDetails:
        """An adapter with all its versions, metrics and lineage."""
        return self._send(_calls.get_adapter(name))

    def upload_adapter(
        self,
        name: str,
        folder: str | Path,
        *,
        task: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> AdapterVersion:
        """Upload a PEFT folder (adapter_config.json, adapter_model.safetensors and, when
        present, switchyard.json) as the next version of `name`."""
        return self._send(_calls.upload_adapter(name, Path(folder), task=task, labels=labels))

    def download_adapter(
        self, name: str, folder: str | Path, *, version: int | None = None
    ) -> list[Path]:
        """Download a version (latest by default) and unpack it into `folder`, which then loads
        with `peft.PeftModel.from_pretrained`; returns the files written."""
        data = self._send(_calls.download_adapter(name, version))
        return _files.extract_adapter(data, Path(folder))

    def delete_adapter(
        self, name: str, *, version: int | None = None, cascade: bool = False
    ) -> DeletedAdapter:
        """Remove all versions of an adapter, or one; `cascade` also removes the adapters
        stacked on it (else they make it a 409)."""
        return self._send(_calls.delete_adapter(name, version, cascade=cascade))

    def pin_adapter(self, name: str, pinned: bool = True) -> Adapter:
        """Keep an adapter resident on the device (or, with `pinned=False`, let it go)."""
        return self._send(_calls.pin_adapter(name, pinned))

    def unpin_adapter(self, name: str) -> Adapter:
        """Let a pinned adapter be evicted again."""
        return self.pin_adapter(name, False)

    # ---------------------------------------------------------------- datasets
    def upload_dataset(
        self,
        source: str | Path | Rows,
        *,
        name: str | None = None,
        filename: str | None = None,
    ) -> Dataset:
        """Upload a JSONL/CSV file by path, or rows (dicts, sent as JSONL); validated row by row."""
        return self._send(_calls.upload_dataset(source, name=name, filename=filename))

    def list_datasets(self) -> list[Dataset]:
        """Every dataset, newest first."""
        return self._send(_calls.list_datasets())

    def get_dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return self._send(_calls.get_dataset(dataset_id))

    def delete_dataset(self, dataset_id: str) -> Deleted:
        """Remove a dataset."""
        return self._send(_calls.delete_dataset(dataset_id))

    # ---------------------------------------------------------------- training jobs
    def create_job(
        self,
        adapter: str,
        *,
        training_data: str | None = None,
        examples: Rows | None = None,
        validation_data: str | None = None,
        task: str | None = None,
        method: str = "auto",
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> TrainingJob:
        """Submit a training job (a dataset id in `training_data`, or inline `examples`)."""
        return self._send(
            _calls.create_job(
                adapter,
                training_data=training_data,
                examples=examples,
                validation_data=validation_data,
                task=task,
                method=method,
                hyperparameters=hyperparameters,
            )
        )

    def get_job(self, job_id: str) -> TrainingJob:
        """A job's status, progress, metrics, result or error."""
        return self._send(_calls.get_job(job_id))

    def list_jobs(self, *, limit: int = 100, status: str | None = None) -> list[TrainingJob]:
        """Jobs, newest first, optionally of one status."""
        return self._send(_calls.list_jobs(limit, status))

    def cancel_job(self, job_id: str) -> TrainingJob:
        """Stop a queued or running job; nothing it made is registered."""
        return self._send(_calls.cancel_job(job_id))

    def job_events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> EventPage:
        """A page of a job's log after event id `after`."""
        return self._send(_calls.job_events(job_id, after, limit))

    def follow(self, job_id: str, *, after: int = 0) -> Iterator[JobEvent]:
        """The job's events as they happen (server-sent events), until the job ends.

        A broken connection is opened again after the last event seen, at most
        `retry.max_retries` times in a row.
        """
        last, breaks = after, 0
        while True:
            try:
                for event in self._stream(job_id, last):
                    last, breaks = event.id, 0
                    yield event
                return
            except STREAM_BREAKS as exc:
                breaks += 1
                if breaks > self.retry.max_retries:
                    raise APIConnectionError(f"event stream of {job_id} broke: {exc}") from exc
                time.sleep(self.retry.backoff_s * 2 ** (breaks - 1))
            except httpx.TransportError as exc:
                raise APIConnectionError(f"event stream of {job_id}: {exc}") from exc

    def _stream(self, job_id: str, after: int) -> Iterator[JobEvent]:
        for data in self._sse_data(_calls.stream_events(job_id, after)):
            yield event_from_sse(data)

    def _sse_data(self, call: Call[Any]) -> Iterator[str]:
        """The data of each server-sent event up to `[DONE]`; 429/503 before the stream retried."""
        attempt = 0
        while True:
            with connect_sse(self._http, call.method, call.path, **call.send_kwargs()) as src:
                if src.response.is_success:
                    for sse in src.iter_sse():
                        if sse.data == STREAM_DONE:
                            return
                        if sse.data:
                            yield sse.data
                    return
                src.response.read()
                delay = self.retry.delay(src.response, attempt)
                if delay is None:
                    checked(src.response)
            time.sleep(delay or 0.0)
            attempt += 1

    def wait_job(self, job_id: str) -> TrainingJob:
        """Follow a job until it ends; returns the finished job."""
        for _event in self.follow(job_id):
            pass
        return self.get_job(job_id)

    # ---------------------------------------------------------------- inference
    def predict(
        self,
        name: str,
        inputs: Sequence[Input],
        *,
        parameters: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> Prediction:
        """Pipeline-shaped outputs of one adapter, one per input."""
        return self._send(_calls.predict(name, inputs, parameters, version))

    def predict_many(
        self,
        adapters: Sequence[str],
        inputs: Sequence[Input],
        *,
        parameters: Mapping[str, Any] | None = None,
    ) -> MultiPrediction:
        """Several adapters over the same inputs in one call."""
        return self._send(_calls.predict_many(adapters, inputs, parameters))

    def embed(self, input: str | Sequence[str], **options: Any) -> Embeddings:
        """Pooled hidden states (options: adapter, model, layers, pooling, normalize)."""
        return self._send(_calls.embed(input, options))

    def complete(self, prompt: str | Sequence[str], **options: Any) -> Completion:
        """OpenAI-style completions on a decoder base (options: model, max_tokens, ...)."""
        return self._send(_calls.complete(prompt, options))

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> ChatCompletion:
        """OpenAI-style chat completions on a decoder base (options as for `complete`)."""
        return self._send(_calls.chat(messages, options))

    def stream_complete(self, prompt: str | Sequence[str], **options: Any) -> Iterator[Completion]:
        """`complete` with `stream`: each chunk's text as the decoder produces it."""
        return self._chunks(_calls.complete(prompt, {**options, "stream": True}), Completion)

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> Iterator[ChatCompletionChunk]:
        """`chat` with `stream`: each chunk's `delta` as the decoder produces it."""
        call = _calls.chat(messages, {**options, "stream": True})
        return self._chunks(call, ChatCompletionChunk)

    def _chunks(self, call: Call[Any], cls: type[M]) -> Iterator[M]:
        for data in self._sse_data(call):
            yield chunk_from_sse(data, cls)

    # ---------------------------------------------------------------- models
    def list_models(self) -> list[ModelCard]:
        """`GET /v1/models`: the base (`_base`), then every adapter."""
        return self._send(_calls.list_models())

    def get_model(self, model_id: str) -> ModelCard:
        """One model of `/v1/models`."""
        return self._send(_calls.get_model(model_id))
