"""The dynamic batcher over a fake engine: batching, back-pressure, and failure isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.errors import SwitchyardError
from app.registry.records import AdapterRef
from app.runtime.encoder_batcher import EncoderBatcher
from app.runtime.engine import EncodedRow, EncodeRequest, EncodeResult
from app.runtime.metrics import Metrics


class FakeEngine:
    """Records each batch; answers each row with (adapter, text) or fails on request."""

    def __init__(self) -> None:
        self.batches: list[list[EncodeRequest]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, jobs: list[EncodeRequest]) -> list[EncodeResult]:
        self.started.set()
        self.gate.wait(5)
        self.batches.append(jobs)
        if any(job.params.get("explode") for job in jobs):
            raise RuntimeError("engine bug")
        results = []
        for job in jobs:
            if job.params.get("refuse"):
                results.append(EncodeResult(error=SwitchyardError(503, "adapter_corrupted", "no")))
            else:
                results.append(EncodeResult(outputs=[(job.key, row.text) for row in job.rows]))
        return results

    @property
    def sizes(self) -> list[int]:
        return [sum(len(job.rows) for job in batch) for batch in self.batches]


def job(name: str, rows: int = 1, **params: Any) -> EncodeRequest:
    return EncodeRequest(
        key=AdapterRef(name, 1),
        task="classification",
        params=params,
        rows=[EncodedRow([101, 102], None, text=f"{name}-{i}") for i in range(rows)],
    )


def run(
    scenario: Callable[[EncoderBatcher, FakeEngine], Awaitable[None]],
    *,
    max_batch_rows: int = 8,
    max_wait_ms: float = 200.0,
    queue_rows: int = 64,
) -> tuple[FakeEngine, Metrics]:
    engine, metrics = FakeEngine(), Metrics()

    async def main() -> None:
        batcher = EncoderBatcher(
            engine,
            max_batch_rows=max_batch_rows,
            max_wait_ms=max_wait_ms,
            queue_rows=queue_rows,
            metrics=metrics,
        )
        batcher.start()
        try:
            await asyncio.wait_for(scenario(batcher, engine), 10)
        finally:
            engine.gate.set()
            await batcher.stop()

    asyncio.run(main())
    return engine, metrics


def test_concurrent_submissions_share_one_batch() -> None:
    async def scenario(batcher: EncoderBatcher, _engine: FakeEngine) -> None:
        names = [f"ad{i % 3}" for i in range(8)]
        outputs = await asyncio.gather(*(batcher.submit(job(n)) for n in names))
        for name, out in zip(names, outputs, strict=True):
            assert out == [((name, 1), f"{name}-0")]  # each caller gets its own rows back
        assert batcher.pending_rows == 0

    engine, metrics = run(scenario, max_batch_rows=8)
    assert engine.sizes == [8]
    assert len({job.key for job in engine.batches[0]}) == 3
    assert metrics.registry.get_sample_value("switchyard_batch_rows_count") == 1


def test_batches_are_capped_by_rows() -> None:
    async def scenario(batcher: EncoderBatcher, _engine: FakeEngine) -> None:
        outputs = await asyncio.gather(*(batcher.submit(job(f"a{i}", rows=2)) for i in range(6)))
        assert [len(o) for o in outputs] == [2] * 6

    engine, _metrics = run(scenario, max_batch_rows=4)
    assert sum(engine.sizes) == 12
    assert all(size <= 4 for size in engine.sizes)
    assert len(engine.sizes) == 3


def test_a_lone_request_waits_at_most_max_wait() -> None:
    async def scenario(batcher: EncoderBatcher, _engine: FakeEngine) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await batcher.submit(job("solo")) == [(("solo", 1), "solo-0")]
        assert loop.time() - start < 2.0

    engine, _metrics = run(scenario, max_wait_ms=20)
    assert engine.sizes == [1]


def test_full_queue_is_429_with_retry_after() -> None:
    async def scenario(batcher: EncoderBatcher, engine: FakeEngine) -> None:
        engine.gate.clear()  # the engine is busy with the first batch
        first = asyncio.ensure_future(batcher.submit(job("a", rows=2)))
        while not engine.started.is_set():
            await asyncio.sleep(0.005)
        queued = asyncio.ensure_future(batcher.submit(job("b", rows=2)))
        await asyncio.sleep(0)
        assert batcher.pending_rows == 4
        with pytest.raises(SwitchyardError) as info:
            await batcher.submit(job("c", rows=1))
        error = info.value
        assert (error.status, error.code) == (429, "queue_full")
        assert error.headers.get("Retry-After") == "1"
        assert error.to_dict()["error"]["code"] == "queue_full"
        engine.gate.set()
        assert len(await first) == 2 and len(await queued) == 2
        assert batcher.pending_rows == 0
        # room again once the queue drains
        assert await batcher.submit(job("c", rows=1)) == [(("c", 1), "c-0")]

    _engine, metrics = run(scenario, queue_rows=4, max_wait_ms=1)
    rejected = metrics.registry.get_sample_value(
        "switchyard_rejected_total", {"reason": "queue_full"}
    )
    assert rejected == 1


def test_oversized_job_is_refused_at_once() -> None:
    async def scenario(batcher: EncoderBatcher, _engine: FakeEngine) -> None:
        with pytest.raises(SwitchyardError) as info:
            await batcher.submit(job("big", rows=5))
        # 413, not 429: a job larger than the whole queue would never fit, retrying is futile
        assert (info.value.status, info.value.code) == (413, "too_many_inputs")
        assert "Retry-After" not in info.value.headers

    engine, _metrics = run(scenario, queue_rows=4)
    assert engine.batches == []


def test_engine_exception_fails_only_that_batch() -> None:
    async def scenario(batcher: EncoderBatcher, engine: FakeEngine) -> None:
        doomed = await asyncio.gather(
            batcher.submit(job("x", explode=True)), batcher.submit(job("y")), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in doomed)  # the same batch
        assert batcher.pending_rows == 0
        # the worker is still alive and later batches run normally
        assert await batcher.submit(job("z")) == [(("z", 1), "z-0")]
        later = await asyncio.gather(*(batcher.submit(job(f"w{i}")) for i in range(3)))
        assert [out[0][1] for out in later] == ["w0-0", "w1-0", "w2-0"]
        assert not batcher._task.done()  # type: ignore[union-attr]

    engine, _metrics = run(scenario, max_wait_ms=50)
    assert engine.sizes[0] == 2 and sum(engine.sizes) == 6


def test_a_job_error_fails_only_that_job() -> None:
    async def scenario(batcher: EncoderBatcher, _engine: FakeEngine) -> None:
        results = await asyncio.gather(
            batcher.submit(job("bad", refuse=True)),
            batcher.submit(job("good")),
            return_exceptions=True,
        )
        assert isinstance(results[0], SwitchyardError) and results[0].code == "adapter_corrupted"
        assert results[1] == [(("good", 1), "good-0")]

    engine, _metrics = run(scenario, max_wait_ms=50)
    assert engine.sizes == [2]


def test_cancelled_caller_does_not_break_the_batch() -> None:
    async def scenario(batcher: EncoderBatcher, engine: FakeEngine) -> None:
        engine.gate.clear()
        gone = asyncio.ensure_future(batcher.submit(job("gone")))
        while not engine.started.is_set():
            await asyncio.sleep(0.005)
        gone.cancel()
        engine.gate.set()
        assert await batcher.submit(job("next")) == [(("next", 1), "next-0")]
        assert batcher.pending_rows == 0

    run(scenario, max_wait_ms=1)


def test_stop_fails_queued_callers_with_503() -> None:
    engine, metrics = FakeEngine(), Metrics()

    async def main() -> None:
        batcher = EncoderBatcher(
            engine, max_batch_rows=8, max_wait_ms=1, queue_rows=64, metrics=metrics
        )
        # never started: whatever is queued when it stops gets a 503
        pending = asyncio.ensure_future(batcher.submit(job("late")))
        await asyncio.sleep(0)
        await batcher.stop()
        with pytest.raises(SwitchyardError) as info:
            await pending
        assert (info.value.status, info.value.code) == (503, "shutting_down")

    asyncio.run(main())


def test_one_caller_at_a_time_never_waits_for_company() -> None:
    """Sequential single-row traffic runs at once: with a 60 s max_wait these requests could
    not finish inside the scenario's 10 s limit if each waited for more rows."""

    async def scenario(batcher: EncoderBatcher, _engine: FakeEngine) -> None:
        for i in range(3):
            assert await batcher.submit(job(f"s{i}")) == [((f"s{i}", 1), f"s{i}-0")]

    engine, _metrics = run(scenario, max_wait_ms=60_000)
    assert engine.sizes == [1, 1, 1]
