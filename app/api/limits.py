"""Request body limits enforced while the body streams in, before any parser sees it.

A Content-Length over the limit is refused at once; a chunked body is counted as it arrives
and cut off at the limit, so a client cannot make the server buffer more than it allows.
Multipart uploads to the upload routes get the upload limit, everything else the (smaller)
body limit.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_PATHS = frozenset({"/v1/adapters", "/v1/datasets"})


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 in API.md's error shape for oversized bodies."""

    def __init__(self, app: ASGIApp, *, body_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.body_bytes = body_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        # Only the upload routes take multipart; any other route keeps the body limit whatever
        # content type the client claims.
        is_upload = (
            headers.get(b"content-type", b"").startswith(b"multipart/")
            and scope.get("method") == "POST"
            and scope.get("path", "").rstrip("/") in UPLOAD_PATHS
        )
        # Multipart framing adds a little; allow for it so a file exactly at the limit passes.
        limit = self.upload_bytes + 64 * 1024 if is_upload else self.body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, int(declared), limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(received, limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge as exc:
            if not started:
                await _reject(send, exc.size, exc.limit)


class _TooLarge(HTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads a body
    # into a 400; this one passes through its handlers as the 413 it is.
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(413, f"request body is at least {size} bytes > limit {limit}")
        self.size = size
        self.limit = limit


async def _reject(send: Send, size: int, limit: int) -> None:
    body = json.dumps(
        {"error": {"code": "payload_too_large",
                   "message": f"request body is at least {size} bytes > limit {limit}",
                   "param": None}}
    ).encode()
    await send({
        "type": "http.response.start", "status": 413,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
