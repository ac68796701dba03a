"""Streamed answers through a runtime replica, without Ray: which requests take the streaming
handle, and `InProcessApp.stream` yielding each chunk as the app sends it (not the body whole),
ending the app's call when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from app.scaleout.forwarding import (
    REPLICA_HEADER,
    ForwardedHead,
    ForwardedRequest,
    InProcessApp,
    is_streaming,
    relay,
)


def _request(
    path: str, *, method: str = "GET", query: str = "", body: bytes = b""
) -> ForwardedRequest:
    return ForwardedRequest(method=method, path=path, query=query, headers=(), body=body)


@pytest.mark.parametrize(
    ("path", "query", "body", "streams"),
    [
        ("/v1/training-jobs/job_1/events", "stream=true", b"", True),
        ("/v1/training-jobs/job_1/events", "after=3&stream=1", b"", True),
        ("/v1/training-jobs/job_1/events", "", b"", False),
        ("/v1/training-jobs/job_1", "stream=true", b"", False),
        ("/v1/chat/completions", "", b'{"model": "m", "stream": true}', True),
        ("/v1/completions", "", b'{"model": "m", "stream": true}', True),
        ("/v1/completions", "", b'{"model": "m", "stream": false}', False),
        ("/v1/completions", "", b"not json", False),
        ("/v1/predict", "", b'{"stream": true}', False),
    ],
)
def test_streaming_requests_are_recognised(
    path: str, query: str, body: bytes, streams: bool
) -> None:
    assert is_streaming(_request(path, query=query, body=body)) is streams


def _gated_app(gate: asyncio.Event, ended: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.post("/gated")
    async def gated(request: Request) -> StreamingResponse:
        sent = await request.body()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield b"first:" + sent
                await gate.wait()
                yield b"second"
            finally:
                ended.set()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_chunks_flow_before_the_body_is_complete() -> None:
    async def scenario() -> None:
        gate, ended = asyncio.Event(), asyncio.Event()
        inner = InProcessApp(_gated_app(gate, ended))
        items = inner.stream(_request("/gated", method="POST", body=b"hi"), "r1")
        head = await asyncio.wait_for(items.__anext__(), 5)
        assert isinstance(head, ForwardedHead) and head.status == 200
        headers = dict(head.headers)
        assert headers[REPLICA_HEADER] == "r1"
        assert headers["content-type"].startswith("text/event-stream")
        # The second chunk waits on the gate: the first arrives before the body is complete.
        assert await asyncio.wait_for(items.__anext__(), 5) == b"first:hi"
        gate.set()
        assert [chunk async for chunk in relay(items)] == [b"second"]
        assert ended.is_set()

    asyncio.run(scenario())


def test_a_client_leaving_ends_the_apps_stream() -> None:
    async def scenario() -> None:
        gate, ended = asyncio.Event(), asyncio.Event()  # the gate never opens
        inner = InProcessApp(_gated_app(gate, ended))
        items = inner.stream(_request("/gated", method="POST"), "r1")
        assert isinstance(await items.__anext__(), ForwardedHead)
        assert await items.__anext__() == b"first:"
        await asyncio.wait_for(items.aclose(), 5)  # what Ray does when the ingress stops reading
        assert ended.is_set()

    asyncio.run(scenario())
