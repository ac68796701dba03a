"""The async side of generation: a bounded queue feeding the engine's steps on one thread.

Requests are tokenized and checked on the caller's side, then queued. The worker hands new
jobs to the engine between decode steps (continuous batching: a request waits at most one
step, not a whole generation), and delivers each job as soon as its last row finishes. A
caller that stops waiting (timeout, disconnect) marks its job cancelled; its rows leave the
batch at the next step and its adapter is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.base import FrozenBase
from app.config import Settings
from app.errors import SwitchyardError
from app.runtime.cache import AdapterCache, Key
from app.runtime.generation import GenerationEngine, GenJob, GenOutput
from app.runtime.layers import LayerSet
from app.runtime.metrics import Metrics
from app.runtime.streaming import GenerationStream

log = logging.getLogger(__name__)
BASE_LABEL = "_base"  # metrics label (and reserved adapter name) of the bare base


class GenerationScheduler:
    """Queue of generation jobs; one worker task drives `engine.tick` in an executor."""

    def __init__(
        self, engine: GenerationEngine, *, max_wait_ms: float, queue_rows: int, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.max_wait = max_wait_ms / 1000.0
        self.queue_rows = queue_rows
        self.metrics = metrics
        self._queue: asyncio.Queue[GenJob] = asyncio.Queue()
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

    async def submit(self, job: GenJob) -> list[GenOutput]:
        """Queue a job and wait for its outputs; 429 when queue_size rows are waiting."""
        return await self.enqueue(job)

    def enqueue(self, job: GenJob) -> asyncio.Future[list[GenOutput]]:
        """Queue a job now (429 when queue_size rows are waiting); the future of its outputs.
        Cancelling the future cancels the job."""
        rows = len(job.prompts)
        if self._rows + rows > self.queue_rows:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise SwitchyardError(
                429,
                "queue_full",
                f"{self._rows} generation rows are waiting; {rows} more would pass queue_size "
                f"{self.queue_rows}",
                headers={"Retry-After": "1"},
            )
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

    async def _collect(self) -> list[GenJob]:
        """While the engine is busy take what is queued now; when idle, wait for a first job
        and then up to max_wait for company, so a burst shares one prefill."""
        jobs: list[GenJob] = []
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

    def _deliver(self, ended: list[GenJob]) -> None:
        for job in ended:
            self._rows -= len(job.prompts)
            future = self._futures.pop(id(job), None)
            if future is None or future.done():
                continue  # the caller went away
            if job.error is not None:
                future.set_exception(job.error)
            else:
                future.set_result([out for out in job.outputs if out is not None])


class GenerationService:
    """Generation for the Runtime and the routes: check, queue, wait (bounded), measure."""

    def __init__(
        self,
        base: FrozenBase,
        layers: LayerSet,
        cache: AdapterCache,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = GenerationEngine(
            base,
            layers,
            cache,
            max_new_tokens=settings.max_new_tokens,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_batch_rows=settings.max_batch_size,
        )
        self.scheduler = GenerationScheduler(
            self.engine,
            max_wait_ms=settings.max_wait_ms,
            queue_rows=settings.queue_size,
            metrics=metrics,
        )

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    def warm_up(self) -> None:
        self.engine.warm_up()

    async def complete(
        self, key: Key | None, inputs: list[Any], params: dict[str, Any]
    ) -> list[GenOutput]:
        """Generate for every input with one adapter (None: the bare base)."""
        job = self._prepare(key, inputs, params)
        return await self._timed(job, label=key[0] if key else BASE_LABEL)

    def stream(
        self, key: Key | None, inputs: list[Any], params: dict[str, Any]
    ) -> GenerationStream:
        """Queue a job whose text comes as it decodes; 4xx (429 included) before anything is
        sent. Must be called on the event loop; iterate the stream's `events()`."""
        job = self._prepare(key, inputs, params)
        label, start = key[0] if key else BASE_LABEL, time.perf_counter()

        def measure(status: str) -> None:
            self.metrics.requests.labels(adapter=label, status=status).inc()
            self.metrics.latency.labels(adapter=label).observe(time.perf_counter() - start)

        tokenizer = self.engine.base.tokenizer
        stream = GenerationStream(
            job,
            decode=lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
            timeout_s=self.settings.request_timeout_s,
            on_end=measure,
        )
        try:
            stream.attach(self.scheduler.enqueue(job))
        except SwitchyardError as exc:
            measure(exc.code)
            raise
        return stream

    def _prepare(self, key: Key | None, inputs: list[Any], params: dict[str, Any]) -> GenJob:
        if len(inputs) > self.settings.max_inputs_per_request:
            raise SwitchyardError(
                413,
                "too_many_inputs",
                f"{len(inputs)} inputs > max_inputs_per_request "
                f"{self.settings.max_inputs_per_request}",
                param="inputs",
            )
        return self.engine.prepare(key, inputs, params)

    async def generate(
        self, key: Key | None, inputs: list[Any], params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Pipeline-shaped outputs: `{"generated_text": ...}` per input."""
        outputs = await self.complete(key, inputs, params)
        return [{"generated_text": out.text} for out in outputs]

    async def _timed(self, job: GenJob, *, label: str) -> list[GenOutput]:
        start, status = time.perf_counter(), "ok"
        try:
            return await asyncio.wait_for(
                self.scheduler.submit(job), self.settings.request_timeout_s
            )
        except TimeoutError as exc:
            status = "timeout"
            raise SwitchyardError(
                504,
                "timeout",
                f"no answer within request_timeout_s {self.settings.request_timeout_s}",
            ) from exc
        except SwitchyardError as exc:
            status = exc.code
            raise
        finally:
            self.metrics.requests.labels(adapter=label, status=status).inc()
            self.metrics.latency.labels(adapter=label).observe(time.perf_counter() - start)
