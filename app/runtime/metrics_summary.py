"""A human-sized summary of the Prometheus metrics: requests/s, latency percentiles, residency.

Prometheus counters only ever grow, so a rate or a recent percentile needs an earlier reading
to subtract. `MetricsWindow` keeps the readings taken at each summary call over the last
`window_s` seconds and compares the newest with the oldest; the first call compares with the
zero reading at start-up, which makes it a lifetime average.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Reading:
    """The counters at one moment: requests per (adapter, status), latency buckets per adapter."""

    at: float
    requests: dict[tuple[str, str], float] = field(default_factory=dict)
    buckets: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    gauges: dict[tuple[str, str], float] = field(default_factory=dict)
    rejected: dict[str, float] = field(default_factory=dict)


class LatencySummary(BaseModel):
    """Percentiles in seconds, interpolated inside histogram buckets as Prometheus does."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None


class AdapterTraffic(BaseModel):
    """One adapter's requests over the window and in total."""

    adapter: str
    requests_total: int
    errors_total: int
    requests_per_second: float
    latency_seconds: LatencySummary


class Tier(BaseModel):
    """Adapters held in one memory tier."""

    bytes: int
    adapters: int


class MetricsSummary(BaseModel):
    """What the dashboard's metrics panel shows; rates and percentiles cover `window_seconds`."""

    object: str = "metrics_summary"
    uptime_seconds: float
    window_seconds: float
    requests_total: int
    errors_total: int
    requests_per_second: float
    latency_seconds: LatencySummary
    resident: dict[str, Tier]
    queue_rows: int
    rejected: dict[str, int]
    adapters: list[AdapterTraffic]


def read(registry: CollectorRegistry, *, at: float) -> Reading:
    """The current values of the serving metrics in `registry`."""
    requests: dict[tuple[str, str], float] = {}
    raw_buckets: dict[str, list[tuple[float, float]]] = {}
    gauges: dict[tuple[str, str], float] = {}
    rejected: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "switchyard_requests_total":
                requests[(labels["adapter"], labels["status"])] = sample.value
            elif sample.name == "switchyard_request_latency_seconds_bucket":
                bound = float(labels["le"])
                raw_buckets.setdefault(labels["adapter"], []).append((bound, sample.value))
            elif sample.name in ("switchyard_resident_bytes", "switchyard_resident_adapters"):
                gauges[(sample.name, labels["tier"])] = sample.value
            elif sample.name == "switchyard_queue_rows":
                gauges[(sample.name, "")] = sample.value
            elif sample.name == "switchyard_rejected_total":
                rejected[labels["reason"]] = sample.value
    buckets = {name: tuple(sorted(pairs)) for name, pairs in raw_buckets.items()}
    return Reading(at=at, requests=requests, buckets=buckets, gauges=gauges, rejected=rejected)


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative `(upper bound, count)` buckets, linear inside a bucket.

    None without observations; in the open +Inf bucket, the largest finite bound (what
    Prometheus' `histogram_quantile` answers too: the histogram knows nothing beyond it).
    """
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _latency(buckets: Iterable[tuple[float, float]]) -> LatencySummary:
    pairs = list(buckets)
    total = int(max((count for _bound, count in pairs), default=0))
    values = [quantile(q, pairs) for q in QUANTILES]
    return LatencySummary(count=total, p50=values[0], p90=values[1], p99=values[2])


def _minus(
    now: tuple[tuple[float, float], ...], before: tuple[tuple[float, float], ...] | None
) -> list[tuple[float, float]]:
    earlier = dict(before or ())
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in now]


def summarize(now: Reading, before: Reading, *, started: float) -> MetricsSummary:
    """Totals from `now`; rates and percentiles from what changed since `before`."""
    span = max(now.at - before.at, 1e-9)
    adapters = sorted({name for name, _status in now.requests} | set(now.buckets))
    traffic = [_traffic(name, now, before, span) for name in adapters]
    merged: dict[float, float] = {}
    for name in now.buckets:
        for bound, count in _minus(now.buckets[name], before.buckets.get(name)):
            merged[bound] = merged.get(bound, 0.0) + count
    tiers = {
        tier: Tier(
            bytes=int(now.gauges.get(("switchyard_resident_bytes", tier), 0)),
            adapters=int(now.gauges.get(("switchyard_resident_adapters", tier), 0)),
        )
        for tier in ("device", "cpu")
    }
    recent = sum(now.requests.values()) - sum(before.requests.values())
    return MetricsSummary(
        uptime_seconds=round(now.at - started, 3),
        window_seconds=round(span, 3),
        requests_total=int(sum(now.requests.values())),
        errors_total=int(sum(v for (_a, status), v in now.requests.items() if status != "ok")),
        requests_per_second=round(recent / span, 3),
        latency_seconds=_latency(merged.items()),
        resident=tiers,
        queue_rows=int(now.gauges.get(("switchyard_queue_rows", ""), 0)),
        rejected={reason: int(v) for reason, v in now.rejected.items()},
        adapters=traffic,
    )


def _traffic(name: str, now: Reading, before: Reading, span: float) -> AdapterTraffic:
    def total(reading: Reading, *, errors: bool = False) -> float:
        return sum(
            value
            for (adapter, status), value in reading.requests.items()
            if adapter == name and (not errors or status != "ok")
        )

    recent = _minus(now.buckets.get(name, ()), before.buckets.get(name))
    return AdapterTraffic(
        adapter=name,
        requests_total=int(total(now)),
        errors_total=int(total(now, errors=True)),
        requests_per_second=round((total(now) - total(before)) / span, 3),
        latency_seconds=_latency(recent),
    )


class MetricsWindow:
    """Readings of one registry over the last `window_s` seconds, for rates and percentiles."""

    def __init__(self, registry: CollectorRegistry, *, window_s: float = 60.0) -> None:
        self.registry = registry
        self.window_s = window_s
        self.started = time.monotonic()
        self._readings: deque[Reading] = deque([Reading(at=self.started)])
        self._lock = threading.Lock()

    def summary(self, *, now: float | None = None) -> MetricsSummary:
        """Read the metrics now and summarize them against the oldest reading in the window."""
        reading = read(self.registry, at=time.monotonic() if now is None else now)
        with self._lock:
            # Keep one reading older than the window so that the span stays near window_s.
            while len(self._readings) > 1 and self._readings[1].at <= reading.at - self.window_s:
                self._readings.popleft()
            before = self._readings[0]
            # At most one reading a second, however often the page polls: the deque stays small.
            if reading.at - self._readings[-1].at >= 1.0:
                self._readings.append(reading)
        return summarize(reading, before, started=self.started)
