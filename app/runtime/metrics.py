"""Prometheus metrics of the serving path, in a registry owned by one app instance.

A per-app `CollectorRegistry` (not the process-global one) lets tests build many apps in one
process without duplicate-metric errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.runtime.metrics_summary import MetricsSummary, MetricsWindow

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Counters, histograms and gauges labelled per adapter where it helps operators."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "switchyard_requests", "Inference requests", ["adapter", "status"], registry=r
        )
        self.latency = Histogram(
            "switchyard_request_latency_seconds",
            "End-to-end inference latency",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "switchyard_batch_rows", "Rows per engine batch", buckets=_BATCH_BUCKETS, registry=r
        )
        # Busy share of the engine = rate(sum) over wall time: how close serving is to its
        # compute ceiling, and whether a slow request waited in the queue or in the forward.
        self.batch_seconds = Histogram(
            "switchyard_batch_seconds",
            "Engine time per batch (tokenize, forward, heads)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_adapters = Histogram(
            "switchyard_batch_adapters",
            "Distinct adapters per engine batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            "switchyard_adapter_loads", "Adapters made resident", ["adapter", "source"], registry=r
        )
        self.evictions = Counter(
            "switchyard_adapter_evictions", "Adapters evicted", ["adapter", "tier"], registry=r
        )
        self.resident_bytes = Gauge(
            "switchyard_resident_bytes", "Adapter bytes resident per tier", ["tier"], registry=r
        )
        self.resident_adapters = Gauge(
            "switchyard_resident_adapters", "Adapters resident per tier", ["tier"], registry=r
        )
        self.queue_rows = Gauge("switchyard_queue_rows", "Rows waiting to be batched", registry=r)
        self.rejected = Counter(
            "switchyard_rejected", "Requests refused before running", ["reason"], registry=r
        )
        self._window = MetricsWindow(r)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def summary(self) -> MetricsSummary:
        """Requests/s and latency percentiles over the last minute, totals, resident bytes."""
        return self._window.summary()
