"""The one gate of every inference call: inputs per request, queue room, timeout, metrics.

Predict, embeddings and generation (plain or streamed) all pass here, so a limit, its error
and what the metrics count are the same whichever path a request takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.errors import SwitchyardError
from app.runtime.metrics import Metrics

BASE_LABEL = "_base"  # metrics label (and reserved adapter name) of the bare base
T = TypeVar("T")


def check_queue_room(metrics: Metrics, *, pending: int, rows: int, limit: int) -> None:
    """429 with Retry-After (counted as rejected) when `rows` more would pass queue_size."""
    if pending + rows > limit:
        metrics.rejected.labels(reason="queue_full").inc()
        raise SwitchyardError(
            429,
            "queue_full",
            f"{pending} rows are queued; {rows} more would pass queue_size {limit}",
            headers={"Retry-After": "1"},
        )


class Admission:
    """Checks a request's size, bounds its wait and records its outcome per adapter label."""

    def __init__(self, *, max_inputs: int, timeout_s: float, metrics: Metrics) -> None:
        self.max_inputs = max_inputs
        self.timeout_s = timeout_s
        self.metrics = metrics

    def check_inputs(self, count: int) -> None:
        """413 past max_inputs_per_request."""
        if count > self.max_inputs:
            raise SwitchyardError(
                413,
                "too_many_inputs",
                f"{count} inputs > max_inputs_per_request {self.max_inputs}",
                param="inputs",
            )

    def timeout_error(self) -> SwitchyardError:
        """The 504 of a request that waited request_timeout_s."""
        return SwitchyardError(
            504, "timeout", f"no answer within request_timeout_s {self.timeout_s}"
        )

    async def bounded(self, work: Awaitable[T]) -> T:
        """`work`, or a 504 once request_timeout_s has passed (the caller records metrics)."""
        try:
            # A deadline on this task, not wait_for's extra task per request.
            async with asyncio.timeout(self.timeout_s):
                return await work
        except TimeoutError as exc:
            raise self.timeout_error() from exc

    async def run(self, work: Awaitable[T], *, label: str) -> T:
        """`bounded(work)`, counted and timed under `label` whatever the outcome."""
        finish = self.recorder(label)
        status = "ok"
        try:
            return await self.bounded(work)
        except SwitchyardError as exc:
            status = exc.code
            raise
        finally:
            finish(status)

    def recorder(self, label: str) -> Callable[[str], None]:
        """Starts the clock now; call the result once with the outcome ("ok" or a code)."""
        start = time.perf_counter()

        def finish(status: str) -> None:
            self.record(label, status, time.perf_counter() - start)

        return finish

    def record(self, label: str, status: str, elapsed_s: float) -> None:
        """Count one request of `label` with `status` and its latency."""
        self.metrics.requests.labels(adapter=label, status=status).inc()
        self.metrics.latency.labels(adapter=label).observe(elapsed_s)
