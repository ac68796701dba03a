"""Streaming generation: text deltas of each row as the engine decodes it, in order.

The engine tells a `GenerationStream` of every token on its own thread; the stream decodes
the row so far and queues only the text that can no longer change: a trailing partial UTF-8
character (decoded as U+FFFD) and any tail that could still grow into a stop string are held
back until the next token or the row's end, so the deltas always add up to the final text.
The caller iterates `events()` on the event loop; when it stops early (a disconnect), it
cancels the job, whose rows then leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from app.errors import SwitchyardError
from app.runtime.generation import GenerateRequest, GenOutput

REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes half a character to


@dataclass(frozen=True)
class TextDelta:
    """New text of row `index`."""

    index: int
    text: str


@dataclass(frozen=True)
class RowEnd:
    """Row `index` finished: the text not sent yet, and the row's whole output."""

    index: int
    text: str
    output: GenOutput


StreamEvent = TextDelta | RowEnd
_END = object()


def stable_text(text: str, stops: list[str]) -> str:
    """The part of `text` that later tokens cannot change or cut at a stop string."""
    text = text.rstrip(REPLACEMENT)
    longest = max((len(s) for s in stops), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(stop.startswith(tail) for stop in stops):
            return text[:-k]
    return text


class GenerationStream:
    """The events of one streamed job; `attach` it to the job's future, then iterate."""

    def __init__(
        self,
        job: GenerateRequest,
        *,
        decode: Callable[[list[int]], str],
        timeout_s: float,
        on_end: Callable[[str], None],
    ) -> None:
        self.job = job
        self._decode = decode
        self._stops = list(job.params.stop)
        self._sent = [""] * len(job.prompts)
        self._timeout_s = timeout_s
        self._on_end = on_end  # told the outcome once: "ok", an error code or "cancelled"
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._future: asyncio.Future[list[GenOutput]] | None = None
        job.listener = self

    def attach(self, future: asyncio.Future[list[GenOutput]]) -> None:
        """The scheduler's future of the job: its end (or error) closes the stream."""
        self._future = future
        future.add_done_callback(lambda _f: self._queue.put_nowait(_END))

    # ------------------------------------------------ engine thread (RowListener)
    def token(self, index: int, generated: list[int]) -> None:
        """Queue the row's new stable text, if any."""
        stable = stable_text(self._decode(generated), self._stops)
        sent = self._sent[index]
        if len(stable) > len(sent) and stable.startswith(sent):
            self._sent[index] = stable
            self._loop.call_soon_threadsafe(
                self._queue.put_nowait, TextDelta(index, stable[len(sent) :])
            )

    def finish(self, index: int, output: GenOutput) -> None:
        """Queue the row's end with whatever text was held back."""
        sent = self._sent[index]
        rest = output.text[len(sent) :] if output.text.startswith(sent) else ""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, RowEnd(index, rest, output))

    # ------------------------------------------------ event loop
    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        """Deltas and row ends until the job is over; raises its error (504 past the timeout).

        Leaving early cancels the job."""
        if self._future is None:
            raise RuntimeError("attach the stream to its job's future first")
        deadline = time.monotonic() + self._timeout_s
        status = "cancelled"
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(remaining, 0.0))
                except TimeoutError as exc:
                    status = "timeout"
                    raise SwitchyardError(
                        504, "timeout", f"no answer within request_timeout_s {self._timeout_s}"
                    ) from exc
                if item is _END:
                    break
                assert isinstance(item, TextDelta | RowEnd)
                yield item
            error = None if self._future.cancelled() else self._future.exception()
            if error is not None:
                status = getattr(error, "code", "internal_error")
                raise error
            status = "ok"
        finally:
            if not self._future.done():
                self._future.cancel()  # the engine drops the job's rows at its next step
            self._on_end(status)
