"""Wire the serving parts over one base: wrapped layers, residency cache, engine, batcher."""

from __future__ import annotations

from app.base import BaseModel as Base
from app.config import Settings
from app.registry.catalog import Registry
from app.runtime.batcher import Batcher
from app.runtime.cache import AdapterCache, CacheLimits
from app.runtime.engine import Engine
from app.runtime.layers import LayerSet
from app.runtime.metrics import Metrics


def serving_layer_paths(base: Base) -> list[str]:
    """Every linear layer an adapter may target: all of them except a decoder's LM head."""
    return [p for p in base.linear_shapes if p.split(".")[-1] not in {"lm_head"}]


class Runtime:
    """The serving path of one base: built once at start-up, shared by every request."""

    def __init__(self, base: Base, registry: Registry, settings: Settings, metrics: Metrics) -> None:
        self.base = base
        self.metrics = metrics
        self.layers = LayerSet(base.model, serving_layer_paths(base))
        self.cache = AdapterCache(
            self.layers,
            registry.load_weights,
            limits=CacheLimits(
                max_slots=settings.max_slots,
                device_bytes=settings.device_bytes,
                cpu_bytes=settings.cpu_bytes,
            ),
            device=base.device,
            metrics=metrics,
            is_pinned=registry.store.is_pinned,
        )
        self.engine = Engine(
            base, self.layers, self.cache, max_tokens=settings.max_input_tokens,
            truncate=settings.truncate_inputs, max_batch_rows=settings.max_batch_size,
        )
        self.batcher = Batcher(
            self.engine.run,
            max_batch_rows=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_rows=settings.queue_size,
            metrics=metrics,
        )
