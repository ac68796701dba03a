"""`stream: true` for `/v1/completions` and `/v1/chat/completions`: OpenAI-shaped SSE chunks.

Each chunk is `data: {json}\\n\\n` carrying the text decoded since the last one; a choice's
last chunk names its `finish_reason`, `stream_options.include_usage` adds a final chunk with
no choices and the token counts, and `data: [DONE]` ends the stream. The request is checked
and queued before the response starts, so a bad request or a full queue is still a plain 4xx
(429 included); a failure after that is sent as a `data: {"error": ...}` chunk, which the
`openai` SDK raises as an `APIError`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict

from app.api.openai_schemas import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    Usage,
)
from app.errors import SwitchyardError
from app.runtime.generation import GenOutput
from app.runtime.streaming import GenerationStream, RowEnd, StreamEvent

Chunk = Completion | ChatCompletionChunk
# How /openapi.json describes a streamed answer.
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events of chunks ending in "
        "`data: [DONE]`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


def stream_response(
    stream: GenerationStream, *, model: str, chat: bool, include_usage: bool
) -> EventSourceResponse:
    """The SSE response of a queued streamed job."""
    build = _ChatChunks(model) if chat else _CompletionChunks(model)
    return EventSourceResponse(
        _server_sent(stream, build, include_usage=include_usage),
        # Proxies must pass chunks through as they come, not buffer them.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _CompletionChunks:
    """`text_completion` chunks: one text delta of one choice each."""

    def __init__(self, model: str) -> None:
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}

    def start(self, index: int) -> list[Chunk]:
        return []

    def event(self, event: StreamEvent) -> list[Chunk]:
        reason = event.output.finish_reason if isinstance(event, RowEnd) else None
        choice = CompletionChoice(index=event.index, text=event.text, finish_reason=reason)
        return [Completion(**self.head, choices=[choice])]

    def usage(self, usage: Usage) -> Chunk:
        return Completion(**self.head, choices=[], usage=usage)


class _ChatChunks:
    """`chat.completion.chunk`s: the role first, then content deltas, then the finish."""

    def __init__(self, model: str) -> None:
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        self.head = head

    def _chunk(self, index: int, delta: ChatDelta, reason: str | None = None) -> Chunk:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=reason)
        return ChatCompletionChunk(**self.head, choices=[choice])

    def start(self, index: int) -> list[Chunk]:
        return [self._chunk(index, ChatDelta(role="assistant", content=""))]

    def event(self, event: StreamEvent) -> list[Chunk]:
        chunks = [self._chunk(event.index, ChatDelta(content=event.text))] if event.text else []
        if isinstance(event, RowEnd):
            chunks.append(self._chunk(event.index, ChatDelta(), event.output.finish_reason))
        return chunks

    def usage(self, usage: Usage) -> Chunk:
        return ChatCompletionChunk(**self.head, choices=[], usage=usage)


async def _server_sent(
    stream: GenerationStream, build: _CompletionChunks | _ChatChunks, *, include_usage: bool
) -> AsyncIterator[bytes]:
    outputs: list[GenOutput] = []
    for index in range(len(stream.job.prompts)):
        for chunk in build.start(index):
            yield _data(chunk)
    try:
        # aclosing: a client that goes away cancels the job now, not when the GC runs.
        async with aclosing(stream.events()) as events:
            async for event in events:
                if isinstance(event, RowEnd):
                    outputs.append(event.output)
                for chunk in build.event(event):
                    yield _data(chunk)
    except SwitchyardError as exc:
        yield _data_text(_error_json(exc))
        return
    if include_usage:
        yield _data(build.usage(_usage(outputs)))
    yield _data_text("[DONE]")


def _usage(outputs: list[GenOutput]) -> Usage:
    prompt = sum(out.prompt_tokens for out in outputs)
    completion = sum(len(out.token_ids) for out in outputs)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _data(chunk: Chunk) -> bytes:
    return _data_text(chunk.model_dump_json())


def _data_text(payload: str) -> bytes:
    # Pre-serialised: ServerSentEvent(data=...) would JSON-encode again, and `[DONE]` is not JSON.
    return format_sse_event(data_str=payload)


def _error_json(exc: SwitchyardError) -> str:
    return SwitchyardErrorChunk.model_validate(exc.to_dict()).model_dump_json()


class _ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class SwitchyardErrorChunk(BaseModel):
    """A failure after the stream started: API.md's error shape as one chunk."""

    error: _ErrorDetail
