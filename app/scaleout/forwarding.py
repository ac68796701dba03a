"""What crosses from the Ray Serve ingress to a runtime replica, and what the replica does.

The ingress forwards each HTTP request whole (method, path, query, headers, body) to one
runtime replica, keyed by the adapter it names; the replica answers it with the ordinary
Switchyard app running in its process (its own cache, batcher and training workers), so the
API is the same byte for byte. Ray is not imported here: these parts are tested without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.errors import SwitchyardError
from app.runtime.cache import AdapterCache, Resident

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-switchyard-replica"
RETRY_AFTER_S = 1
_ADAPTER_PATH = re.compile(r"^/v1/adapters/([a-z0-9][a-z0-9_-]{0,63})(?:/|$)")
# Bodies naming adapters: predict, embeddings, the OpenAI-style routes, training.
_BODY_ROUTES = (
    "/v1/predict",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/chat/completions",
)
# Hop-by-hop and length headers are the proxy's to set, not the replica's.
_DROPPED = {"content-length", "transfer-encoding", "connection", "keep-alive", "host"}


@dataclass(frozen=True)
class ForwardedRequest:
    """An HTTP request as the ingress received it."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class ForwardedResponse:
    """A runtime replica's answer, and which replica gave it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class ForwardedHead:
    """The first item of a streamed answer: status and headers; the body's chunks follow."""

    status: int
    headers: tuple[tuple[str, str], ...]


def is_streaming(request: ForwardedRequest) -> bool:
    """Whether the answer may be a stream (job events with `?stream=true`, OpenAI-style calls
    with `"stream": true`): those go through Ray's streaming handle, the rest whole."""
    if request.path.startswith("/v1/training-jobs/") and request.path.endswith("/events"):
        return parse_qs(request.query).get("stream", [""])[-1].lower() in ("true", "1")
    if request.path not in ("/v1/completions", "/v1/chat/completions"):
        return False
    try:
        parsed = json.loads(request.body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


def routing_key(path: str, body: bytes) -> str | None:
    """The adapter a request is routed by; None for requests that touch no one adapter.

    A multi-adapter call (`/v1/predict` with `adapters`) is keyed by its first adapter: the
    whole call then runs on one replica, so its adapters share one base pass there.
    """
    match = _ADAPTER_PATH.match(path)
    if match is not None:
        return None if match.group(1) == "_base" else match.group(1)
    if path not in _BODY_ROUTES or not body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None  # the replica answers the 400
    if not isinstance(parsed, dict):
        return None
    names = parsed.get("adapters")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0]
    for field in ("adapter", "model"):
        value = parsed.get(field)
        if isinstance(value, str) and value:
            return value
    return None


class AdapterSlot:
    """One adapter a runtime replica holds for Ray's multiplexer: a counted user of the cache.

    Ray Serve calls `__del__` when it evicts the adapter from the replica; that releases the
    slot through our cache, so a resident Ray still routes to cannot be evicted under it, and
    one Ray no longer routes to becomes evictable by our LRU again (refs drop to zero).
    """

    def __init__(self, cache: AdapterCache, resident: Resident | None) -> None:
        self.cache = cache
        self.resident = resident
        self._released = threading.Event()

    @classmethod
    def acquire(cls, app: FastAPI, name: str) -> AdapterSlot:
        """Hold the latest version of `name` resident; an adapter that is missing or does not
        load holds nothing (the request itself then answers the 404 or 503)."""
        runtime = app.state.runtime
        try:
            version = app.state.registry.store.resolve(name)
            return cls(runtime.cache, runtime.cache.acquire(name, version))
        except SwitchyardError as exc:
            log.info("multiplexed adapter %s holds no slot: %s", name, exc.message)
            return cls(runtime.cache, None)

    def release(self) -> None:
        """Give the slot back (once, however often Ray and the garbage collector call)."""
        if self.resident is None or self._released.is_set():
            return
        self._released.set()
        self.cache.release(self.resident)

    def __del__(self) -> None:
        self.release()


class InProcessApp:
    """The Switchyard app of one replica, lifespan started, answering forwarded requests."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._lifespan = app.router.lifespan_context(app)
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://replica", timeout=None
        )

    async def start(self) -> None:
        """Run the app's start-up: base, registry, runtime, catalog, training workers."""
        await self._lifespan.__aenter__()

    async def stop(self) -> None:
        """Run the app's shutdown (drain, interrupt training)."""
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def slot(self, name: str) -> AdapterSlot:
        """The multiplexer's loader: load `name` off the event loop."""
        return await run_in_threadpool(AdapterSlot.acquire, self.app, name)

    async def answer(self, request: ForwardedRequest, replica: str) -> ForwardedResponse:
        """Run one forwarded request through the app; the response names this replica."""
        response = await self._client.request(
            request.method,
            request.path,
            params=request.query or None,
            headers=[(k, v) for k, v in request.headers if k.lower() not in _DROPPED],
            content=request.body,
        )
        return ForwardedResponse(
            status=response.status_code,
            headers=(*_kept(response.headers.multi_items()), (REPLICA_HEADER, replica)),
            body=response.content,
        )

    async def stream(
        self, request: ForwardedRequest, replica: str
    ) -> AsyncGenerator[ForwardedHead | bytes, None]:
        """Run one forwarded request through the app, yielding its head, then each body chunk
        as the app sends it (httpx's ASGI transport would buffer the body whole)."""
        messages: asyncio.Queue[MutableMapping[str, Any] | None] = asyncio.Queue()
        done = asyncio.Event()
        task = asyncio.create_task(self._call(_scope(request), request.body, messages, done))
        try:
            while (message := await messages.get()) is not None:
                if message["type"] == "http.response.start":
                    headers = [
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                    ]
                    yield ForwardedHead(
                        status=message["status"],
                        headers=(*_kept(headers), (REPLICA_HEADER, replica)),
                    )
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body", False):
                        break
            await task  # background tasks run after the body, as an HTTP server waits
        finally:
            done.set()  # the client left (or all was sent): the app sees a disconnect
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _call(
        self,
        scope: dict[str, Any],
        body: bytes,
        messages: asyncio.Queue[MutableMapping[str, Any] | None],
        done: asyncio.Event,
    ) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            await messages.put(message)

        try:
            await self.app(scope, receive, send)
        except Exception:
            # Starlette has answered 500 already if nothing was sent; a stream just ends.
            log.exception("a streamed request failed in the app")
        finally:
            messages.put_nowait(None)


async def relay(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """A streamed answer's body chunks as they come; a replica lost mid-stream ends it early
    (the status has been sent: the client sees a truncated stream, not an error)."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # Ray's errors vary by kind, as for whole answers
        log.warning("runtime replica failed mid-stream: %s: %s", type(exc).__name__, exc)


def replica_unavailable(exc: Exception) -> JSONResponse:
    """The 503 for a request whose replica died or restarts: retry, another one answers."""
    error = {
        "code": "replica_unavailable",
        "message": f"the replica serving this request stopped ({type(exc).__name__}); "
        f"retry in {RETRY_AFTER_S} s",
        "param": None,
    }
    return JSONResponse(
        {"error": error}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _scope(request: ForwardedRequest) -> dict[str, Any]:
    headers = [(k.lower(), v) for k, v in request.headers if k.lower() not in _DROPPED]
    headers += [("host", "replica"), ("content-length", str(len(request.body)))]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query.encode("latin-1"),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "server": ("replica", 80),
        "client": ("127.0.0.1", 0),
    }


def _kept(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in headers if k.lower() not in _DROPPED)
