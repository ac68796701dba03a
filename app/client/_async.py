"""`AsyncClient`: the asyncio client, the same methods as `Client`, awaitable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from httpx_sse import aconnect_sse
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


class AsyncClient:
    """An asyncio client of one Switchyard service: `Client`'s methods, awaitable.

    `base_url` and `api_key` default to `SWITCHYARD_URL` and `SWITCHYARD_KEY`. 429 and 503
    answers are retried as `retry` says (Retry-After honoured); every other error raises a
    `SwitchyardAPIError` subclass. Use it as an async context manager, or await `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_url(base_url)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(resolve_key(api_key)),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # ---------------------------------------------------------------- sending
    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            response = await self._request(call)
            delay = self.retry.delay(response, attempt)
            if delay is None:
                return call.parse(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def _request(self, call: Call[Any]) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.path, **call.send_kwargs())
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"{call.method} {call.path}: no answer in time") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{call.method} {call.path}: {exc}") from exc

    # ---------------------------------------------------------------- service
    async def info(self) -> ServiceInfo:
        """The base model, supported methods and tasks, and limits."""
        return await self._send(_calls.info())

    async def live(self) -> Health:
        """200 while the process runs."""
        return await self._send(_calls.health("live"))

    async def ready(self) -> Health:
        """Ready to serve; raises ServiceUnavailableError (after retries) while not."""
        return await self._send(_calls.health("ready"))

    async def metrics(self) -> str:
        """Prometheus text."""
        return await self._send(_calls.metrics())

    # ---------------------------------------------------------------- adapters
    async def list_adapters(self) -> list[Adapter]:
        """Every adapter this key may use, with its latest version and residency."""
        return await self._send(_calls.list_adapters())

    async def get_adapter(self, name: str) -> AdapterDetails:
        """An adapter with all its versions, metrics and lineage."""
        return await self._send(_calls.get_adapter(name))

    async def upload_adapter(
        self,
        name: str,
        folder: str | Path,
        *,
        task: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> AdapterVersion:
        """Upload a PEFT folder (adapter_config.json, adapter_model.safetensors and, when
        present, switchyard.json) as the next version of `name`."""
        return await self._send(_calls.upload_adapter(name, Path(folder), task=task, labels=labels))

    async def download_adapter(
        self, name: str, folder: str | Path, *, version: int | None = None
    ) -> list[Path]:
        """Download a version (latest by default) and unpack it into `folder`, which then loads
        with `peft.PeftModel.from_pretrained`; returns the files written."""
        data = await self._send(_calls.download_adapter(name, version))
        return _files.extract_adapter(data, Path(folder))

    async def delete_adapter(
        self, name: str, *, version: int | None = None, cascade: bool = False
    ) -> DeletedAdapter:
        """Remove all versions of an adapter, or one; `cascade` also removes the adapters
        stacked on it (else they make it a 409)."""
        return await self._send(_calls.delete_adapter(name, version, cascade=cascade))

    async def pin_adapter(self, name: str, pinned: bool = True) -> Adapter:
        """Keep an adapter resident on the device (or, with `pinned=False`, let it go)."""
        return await self._send(_calls.pin_adapter(name, pinned))

    async def unpin_adapter(self, name: str) -> Adapter:
        """Let a pinned adapter be evicted again."""
        return await self.pin_adapter(name, False)

    # ---------------------------------------------------------------- datasets
    async def upload_dataset(
        self,
        source: str | Path | Rows,
        *,
        name: str | None = None,
        filename: str | None = None,
    ) -> Dataset:
        """Upload a JSONL/CSV file by path, or rows (dicts, sent as JSONL); validated row by row."""
        return await self._send(_calls.upload_dataset(source, name=name, filename=filename))

    async def list_datasets(self) -> list[Dataset]:
        """Every dataset, newest first."""
        return await self._send(_calls.list_datasets())

    async def get_dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return await self._send(_calls.get_dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> Deleted:
        """Remove a dataset."""
        return await self._send(_calls.delete_dataset(dataset_id))

    # ---------------------------------------------------------------- training jobs
    async def create_job(
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
        return await self._send(
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

    async def get_job(self, job_id: str) -> TrainingJob:
        """A job's status, progress, metrics, result or error."""
        return await self._send(_calls.get_job(job_id))

    async def list_jobs(self, *, limit: int = 100, status: str | None = None) -> list[TrainingJob]:
        """Jobs, newest first, optionally of one status."""
        return await self._send(_calls.list_jobs(limit, status))

    async def cancel_job(self, job_id: str) -> TrainingJob:
        """Stop a queued or running job; nothing it made is registered."""
        return await self._send(_calls.cancel_job(job_id))

    async def job_events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> EventPage:
        """A page of a job's log after event id `after`."""
        return await self._send(_calls.job_events(job_id, after, limit))

    async def follow(self, job_id: str, *, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events as they happen (server-sent events), until the job ends.

        A broken connection is opened again after the last event seen, at most
        `retry.max_retries` times in a row.
        """
        last, breaks = after, 0
        while True:
            try:
                async for event in self._stream(job_id, last):
                    last, breaks = event.id, 0
                    yield event
                return
            except STREAM_BREAKS as exc:
                breaks += 1
                if breaks > self.retry.max_retries:
                    raise APIConnectionError(f"event stream of {job_id} broke: {exc}") from exc
                await asyncio.sleep(self.retry.backoff_s * 2 ** (breaks - 1))
            except httpx.TransportError as exc:
                raise APIConnectionError(f"event stream of {job_id}: {exc}") from exc

    async def _stream(self, job_id: str, after: int) -> AsyncIterator[JobEvent]:
        async for data in self._sse_data(_calls.stream_events(job_id, after)):
            yield event_from_sse(data)

    async def _sse_data(self, call: Call[Any]) -> AsyncIterator[str]:
        """The data of each server-sent event up to `[DONE]`; 429/503 before the stream retried."""
        attempt = 0
        kwargs = call.send_kwargs()
        while True:
            async with aconnect_sse(self._http, call.method, call.path, **kwargs) as src:
                if src.response.is_success:
                    async for sse in src.aiter_sse():
                        if sse.data == STREAM_DONE:
                            return
                        if sse.data:
                            yield sse.data
                    return
                await src.response.aread()
                delay = self.retry.delay(src.response, attempt)
                if delay is None:
                    checked(src.response)
            await asyncio.sleep(delay or 0.0)
            attempt += 1

    async def wait_job(self, job_id: str) -> TrainingJob:
        """Follow a job until it ends; returns the finished job."""
        async for _event in self.follow(job_id):
            pass
        return await self.get_job(job_id)

    # ---------------------------------------------------------------- inference
    async def predict(
        self,
        name: str,
        inputs: Sequence[Input],
        *,
        parameters: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> Prediction:
        """Pipeline-shaped outputs of one adapter, one per input."""
        return await self._send(_calls.predict(name, inputs, parameters, version))

    async def predict_many(
        self,
        adapters: Sequence[str],
        inputs: Sequence[Input],
        *,
        parameters: Mapping[str, Any] | None = None,
    ) -> MultiPrediction:
        """Several adapters over the same inputs in one call."""
        return await self._send(_calls.predict_many(adapters, inputs, parameters))

    async def embed(self, input: str | Sequence[str], **options: Any) -> Embeddings:
        """Pooled hidden states (options: adapter, model, layers, pooling, normalize)."""
        return await self._send(_calls.embed(input, options))

    async def complete(self, prompt: str | Sequence[str], **options: Any) -> Completion:
        """OpenAI-style completions on a decoder base (options: model, max_tokens, ...)."""
        return await self._send(_calls.complete(prompt, options))

    async def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> ChatCompletion:
        """OpenAI-style chat completions on a decoder base (options as for `complete`)."""
        return await self._send(_calls.chat(messages, options))

    async def stream_complete(
        self, prompt: str | Sequence[str], **options: Any
    ) -> AsyncIterator[Completion]:
        """`complete` with `stream`: each chunk's text as the decoder produces it."""
        call = _calls.complete(prompt, {**options, "stream": True})
        async for chunk in self._chunks(call, Completion):
            yield chunk

    async def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        """`chat` with `stream`: each chunk's `delta` as the decoder produces it."""
        call = _calls.chat(messages, {**options, "stream": True})
        async for chunk in self._chunks(call, ChatCompletionChunk):
            yield chunk

    async def _chunks(self, call: Call[Any], cls: type[M]) -> AsyncIterator[M]:
        async for data in self._sse_data(call):
            yield chunk_from_sse(data, cls)

    # ---------------------------------------------------------------- models
    async def list_models(self) -> list[ModelCard]:
        """`GET /v1/models`: the base (`_base`), then every adapter."""
        return await self._send(_calls.list_models())

    async def get_model(self, model_id: str) -> ModelCard:
        """One model of `/v1/models`."""
        return await self._send(_calls.get_model(model_id))
