"""Request body limits enforced while the body streams in, before any parser sees it.

A Content-Length over the limit is refused at once; a chunked body is counted as it arrives
and cut off at the limit, so a client cannot make the server buffer more than it allows.
Multipart uploads to the upload routes get an upload limit (the dataset routes their own, as
large as the largest dataset upload, an unlabeled corpus; the adapter route the adapter upload
limit), everything else the (smaller) body limit. Multipart bodies are also cut off past
`max_parts` parts (counted by their delimiters as they stream in), before any route's form
parser spools them.

The whole body must also arrive within `body_read_timeout_s` of the request's start: a client
that trickles bytes (slowloris) would otherwise hold a connection and a worker's buffers for
as long as it likes. Past the deadline the request is a 408. The deadline covers only the
body: once it is complete, later `receive` calls (a stream waiting for the client to go away)
pass through untouched.
"""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_PATHS = frozenset({"/v1/adapters", "/v1/datasets", "/v1/files"})
DATASET_PATHS = frozenset({"/v1/datasets", "/v1/files"})


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 in API.md's error shape for oversized bodies."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_bytes: int,
        upload_bytes: int,
        dataset_bytes: int | None = None,
        max_parts: int = 16,
        read_timeout_s: float = 60.0,
    ) -> None:
        self.app = app
        self.body_bytes = body_bytes
        self.upload_bytes = upload_bytes
        # The dataset routes' own limit; the service checks each file against its kind's.
        self.dataset_bytes = upload_bytes if dataset_bytes is None else dataset_bytes
        self.max_parts = max_parts
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = self._limit(scope, headers)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, _TooLarge(int(declared), limit))
            return
        received = 0
        started = False
        boundary = _boundary(headers.get(b"content-type", b""))
        parts = _PartCounter(boundary, self.max_parts) if boundary else None
        timed = _Deadline(self.read_timeout_s, receive)

        async def limited_receive() -> Message:
            nonlocal received
            message = await timed.receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise _TooLarge(received, limit)
                if parts is not None:
                    parts.feed(chunk)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except LimitExceeded as exc:
            if not started:
                await _reject(send, exc)

    def _limit(self, scope: Scope, headers: dict[bytes, bytes]) -> int:
        # Only the upload routes take multipart; any other route keeps the body limit whatever
        # content type the client claims.
        path = scope.get("path", "").rstrip("/")
        is_upload = (
            headers.get(b"content-type", b"").startswith(b"multipart/")
            and scope.get("method") == "POST"
            and path in UPLOAD_PATHS
        )
        if not is_upload:
            return self.body_bytes
        upload = self.dataset_bytes if path in DATASET_PATHS else self.upload_bytes
        # Multipart framing adds a little; allow for it so a file exactly at the limit passes.
        return upload + 64 * 1024


class LimitExceeded(HTTPException):
    """A 413 (or `status`) with its own error code. An HTTPException, because FastAPI turns any
    other error raised while it reads a body into a 400; this one passes through its handlers
    as is."""

    def __init__(self, code: str, message: str, *, status: int = 413) -> None:
        super().__init__(status, message)
        self.code = code


class _Deadline:
    """`receive`, bounded in total time until the last body chunk has arrived."""

    def __init__(self, timeout_s: float, receive: Receive) -> None:
        self.timeout_s = timeout_s
        self._receive = receive
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._complete = False

    async def receive(self) -> Message:
        if self._complete:
            return await self._receive()
        left = self._deadline - asyncio.get_running_loop().time()
        try:
            # A deadline on this task (wait_for would start another task per receive).
            async with asyncio.timeout(max(left, 0.0)):
                message = await self._receive()
        except TimeoutError:
            raise LimitExceeded(
                "body_timeout",
                f"the request body did not arrive within body_read_timeout_s {self.timeout_s}",
                status=408,
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._complete = True
        return message


class _TooLarge(LimitExceeded):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "payload_too_large", f"request body is at least {size} bytes > limit {limit}"
        )


class _PartCounter:
    """Counts multipart delimiters across chunks; too many parts is a 413 `too_many_parts`."""

    def __init__(self, boundary: bytes, max_parts: int) -> None:
        self.delimiter = b"--" + boundary
        self.max_parts = max_parts
        self.count = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        # The kept tail is shorter than a delimiter, so no delimiter is counted twice, and one
        # split across two chunks is counted once.
        data = self._tail + chunk
        self.count += data.count(self.delimiter)
        self._tail = data[-(len(self.delimiter) - 1) :]
        if self.count - 1 > self.max_parts:  # the closing delimiter ends the last part
            raise LimitExceeded(
                "too_many_parts",
                f"multipart body has more than max_multipart_parts {self.max_parts} parts",
            )


def _boundary(content_type: bytes) -> bytes | None:
    """The boundary of a multipart content type, or None."""
    if not content_type.lower().startswith(b"multipart/"):
        return None
    for param in content_type.split(b";")[1:]:
        key, _, value = param.strip().partition(b"=")
        if key.lower() == b"boundary" and value.strip(b'"'):
            return value.strip(b'"')
    return None


async def _reject(send: Send, exc: LimitExceeded) -> None:
    body = json.dumps({"error": {"code": exc.code, "message": exc.detail, "param": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
