"""The encoder's batcher: one bounded queue for every adapter, batches formed by rows or time.

Requests for any adapters share the queue; the worker takes what is waiting, waits at most
`max_wait_ms` for more while the batch has fewer than `max_batch_rows` rows, and runs it on
the engine's thread. The queue is bounded in rows: past it, callers get a 429 with
Retry-After at once instead of a growing wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.errors import SwitchyardError
from app.runtime.admission import check_queue_room
from app.runtime.engine import EncodeRequest, EncodeResult
from app.runtime.metrics import Metrics

log = logging.getLogger(__name__)
# A queue item is a group of encode requests that must share one engine batch (one HTTP
# request's adapters).
_Item = tuple[list[EncodeRequest], "asyncio.Future[list[EncodeResult]]"]


class EncoderBatcher:
    """Groups encode requests from concurrent callers into engine batches."""

    def __init__(
        self,
        run: Callable[[list[EncodeRequest]], list[EncodeResult]],
        *,
        max_batch_rows: int,
        max_wait_ms: float,
        queue_rows: int,
        metrics: Metrics,
    ) -> None:
        self._run = run
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.queue_rows = queue_rows
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending_rows = 0
        self._last_rows = 0
        # One thread: the engine runs one forward at a time; more threads would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def stop(self) -> None:
        """Stop taking batches; queued callers get a 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _job, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(SwitchyardError(503, "shutting_down", "service is stopping"))
        self._executor.shutdown(wait=True)

    async def submit(self, job: EncodeRequest) -> list[Any]:
        """Queue a job and wait for its outputs; 429 when the queue is full, 413 when the job
        alone is larger than the queue."""
        (result,) = await self.submit_group([job])
        if result.error is not None:
            raise result.error
        return result.outputs or []

    async def submit_group(self, jobs: list[EncodeRequest]) -> list[EncodeResult]:
        """Queue jobs that must run in the same batch (so that head-only adapters over the
        same inputs share one base pass); each result carries its outputs or its own error."""
        rows = sum(job.size for job in jobs)
        if rows > self.queue_rows:
            # It would never fit: a 429 would only make the client retry forever.
            raise SwitchyardError(
                413,
                "too_many_inputs",
                f"this request needs {rows} rows (inputs x adapters) > queue_size "
                f"{self.queue_rows}; split it",
                param="inputs",
            )
        check_queue_room(self.metrics, pending=self._pending_rows, rows=rows, limit=self.queue_rows)
        future: asyncio.Future[list[EncodeResult]] = asyncio.get_running_loop().create_future()
        self._pending_rows += rows
        self.metrics.queue_rows.set(self._pending_rows)
        self._queue.put_nowait((jobs, future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(jobs, fut) for jobs, fut in batch if not fut.done()]
            try:
                if live:
                    flat = [job for jobs, _ in live for job in jobs]
                    started = loop.time()
                    results = await loop.run_in_executor(self._executor, self._run, flat)
                    self.metrics.batch_seconds.observe(loop.time() - started)
                    self._deliver(live, results)
            except Exception as exc:  # a bug in the engine must not kill the worker
                log.exception("engine batch failed")
                for _jobs, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
            finally:
                self._pending_rows -= sum(_rows(jobs) for jobs, _ in batch)
                self.metrics.queue_rows.set(self._pending_rows)

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        rows = _rows(batch[0][0])
        # Waiting for company only pays when requests overlap: after a batch of one row (one
        # caller at a time) the wait would be pure latency on every request.
        deadline = loop.time() + (self.max_wait if self._last_rows > 1 else 0.0)
        while rows < self.max_batch_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            rows += _rows(item[0])
        self._last_rows = rows
        self.metrics.batch_rows.observe(rows)
        self.metrics.batch_adapters.observe(len({job.key for jobs, _ in batch for job in jobs}))
        return batch

    @staticmethod
    def _deliver(live: list[_Item], results: list[EncodeResult]) -> None:
        position = 0
        for jobs, future in live:
            mine = results[position : position + len(jobs)]
            position += len(jobs)
            if not future.done():  # else the caller timed out or went away
                future.set_result(mine)


def _rows(jobs: list[EncodeRequest]) -> int:
    return sum(job.size for job in jobs)
