"""The decoder's batcher: a bounded queue feeding the engine's decode steps on one thread.

Generate requests are tokenized and checked on the caller's side, then queued. The worker
hands new ones to the engine between decode steps (continuous batching: a request waits at
most one step, not a whole generation), and delivers each as soon as its last row finishes. A
caller that stops waiting (timeout, disconnect) marks its request cancelled; its rows leave
the batch at the next step and its adapter is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from app.errors import SwitchyardError
from app.runtime.admission import check_queue_room
from app.runtime.generation import DecoderEngine, GenerateRequest, GenOutput
from app.runtime.metrics import Metrics

log = logging.getLogger(__name__)


class DecoderBatcher:
    """Queue of generate requests; one worker task drives `engine.tick` in an executor."""

    def __init__(
        self, engine: DecoderEngine, *, max_wait_ms: float, queue_rows: int, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.max_wait = max_wait_ms / 1000.0
        self.queue_rows = queue_rows
        self.metrics = metrics
        self._queue: asyncio.Queue[GenerateRequest] = asyncio.Queue()
        self._futures: dict[int, asyncio.Future[list[GenOutput]]] = {}
        self._rows = 0  # rows queued or in the engine: what queue_size bounds
        # One thread: the engine's state is single-threaded and one forward runs at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_rows(self) -> int:
        """Rows queued or decoding; a trainer yields while there are any."""
        return self._rows

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="generation")

    async def stop(self) -> None:
        """Stop stepping; every waiting caller gets a 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        stopping = SwitchyardError(503, "shutting_down", "service is stopping")
        ended = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.engine.abort, stopping
        )
        while not self._queue.empty():
            job = self._queue.get_nowait()
            job.error = stopping
            ended.append(job)
        self._deliver(ended)
        self._executor.shutdown(wait=True)

    async def submit(self, job: GenerateRequest) -> list[GenOutput]:
        """Queue a job and wait for its outputs; 429 when queue_size rows are waiting."""
        return await self.enqueue(job)

    def enqueue(self, job: GenerateRequest) -> asyncio.Future[list[GenOutput]]:
        """Queue a job now (429 when queue_size rows are waiting); the future of its outputs.
        Cancelling the future cancels the job."""
        rows = len(job.prompts)
        check_queue_room(self.metrics, pending=self._rows, rows=rows, limit=self.queue_rows)
        future: asyncio.Future[list[GenOutput]] = asyncio.get_running_loop().create_future()
        # Runs in the loop thread; the engine reads the flag before its next step.
        future.add_done_callback(lambda f: setattr(job, "cancelled", f.cancelled()))
        self._futures[id(job)] = future
        self._rows += rows
        self._queue.put_nowait(job)
        return future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            new = await self._collect()
            try:
                ended = await loop.run_in_executor(self._executor, self.engine.tick, new)
            except Exception:  # a bug in a step must not kill the worker or strand callers
                log.exception("generation step failed")
                error = SwitchyardError(500, "internal_error", "generation failed; see the log")
                ended = await loop.run_in_executor(self._executor, self.engine.abort, error)
                for job in new:
                    job.error = job.error or error
                seen = {id(job) for job in ended}
                ended += [job for job in new if id(job) not in seen]
            self._deliver(ended)

    async def _collect(self) -> list[GenerateRequest]:
        """While the engine is busy take what is queued now; when idle, wait for a first job
        and then up to max_wait for company, so a burst shares one prefill."""
        jobs: list[GenerateRequest] = []
        if not self.engine.busy:
            jobs.append(await self._queue.get())
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while sum(len(j.prompts) for j in jobs) < self.engine.max_batch_rows:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
        while not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return jobs

    def _deliver(self, ended: list[GenerateRequest]) -> None:
        for job in ended:
            self._rows -= len(job.prompts)
            future = self._futures.pop(id(job), None)
            if future is None or future.done():
                continue  # the caller went away
            if job.error is not None:
                future.set_exception(job.error)
            else:
                future.set_result([out for out in job.outputs if out is not None])
