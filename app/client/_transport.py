"""What the sync and async clients share: request specs, retries, error mapping, SSE parsing."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from app.client.errors import ResponseFormatError, api_error
from app.client.models import JobEvent, parse_event

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
FileField = tuple[str, tuple[str, bytes, str]]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again after 429 or 503.

    The service sends those before doing any work (its queue is full, it is starting or
    draining), so a retry is safe for every method. The wait is the server's `Retry-After`,
    else `backoff_s * 2**attempt`; a `Retry-After` longer than `max_wait_s` is not waited for:
    the error is raised at once.
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 30.0
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to stop retrying."""
        if response.status_code not in self.statuses or attempt >= self.max_retries:
            return None
        after = retry_after(response)
        wait = after if after is not None else self.backoff_s * 2**attempt
        return wait if wait <= self.max_wait_s else None


NO_RETRY = RetryPolicy(max_retries=0)


def retry_after(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds (delta-seconds or an HTTP date), None if absent."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer; the clients send it with retries."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    files: list[FileField] | None = field(default=None)

    def send_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `httpx.Client.request` for this call."""
        kwargs: dict[str, Any] = {}
        if self.params:
            kwargs["params"] = {k: _param(v) for k, v in self.params.items() if v is not None}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.data:
            kwargs["data"] = dict(self.data)
        if self.files:
            kwargs["files"] = list(self.files)
        return kwargs


def _param(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def headers(api_key: str | None) -> dict[str, str]:
    """Default headers of every request."""
    out = {"Accept": "application/json", "User-Agent": "switchyard-client/1"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def checked(response: httpx.Response) -> httpx.Response:
    """The response when it is a success; else the typed exception. The body must be read."""
    if response.is_success:
        return response
    raise api_error(response, retry_after=retry_after(response))


def body(response: httpx.Response) -> Any:
    """The JSON body of a success, or ResponseFormatError."""
    try:
        return checked(response).json()
    except ValueError as exc:
        raise ResponseFormatError(
            f"{response.request.method} {response.request.url.path}: "
            f"answer is not JSON ({response.headers.get('content-type')})"
        ) from exc


def event_from_sse(data: str) -> JobEvent:
    """A typed job event from one server-sent event's `data` line."""
    try:
        return parse_event(json.loads(data))
    except ValueError as exc:
        raise ResponseFormatError(f"server-sent event is not a job event: {data[:200]!r}") from exc


def chunk_from_sse(data: str, cls: type[M]) -> M:
    """One streamed OpenAI chunk from a server-sent event's `data` line."""
    try:
        return cls.model_validate_json(data)
    except ValueError as exc:
        raise ResponseFormatError(
            f"server-sent chunk is not a {cls.__name__}: {data[:200]!r}"
        ) from exc


# The data line that ends an OpenAI stream.
STREAM_DONE = "[DONE]"

# Connection failures after which a stream is opened again where it stopped.
STREAM_BREAKS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.ConnectError)
