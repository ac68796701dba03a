"""Wire the serving parts over one base: wrapped layers, residency cache, engine, batcher."""

from __future__ import annotations

import time
from typing import Any

from app.base import FrozenBase
from app.config import Settings
from app.errors import bad_request
from app.registry.catalog import Registry
from app.runtime.batcher import Batcher
from app.runtime.cache import AdapterCache, CacheLimits
from app.runtime.engine import Engine
from app.runtime.generation import DecoderLayerSet
from app.runtime.generation_service import GenerationService
from app.runtime.layers import LayerSet
from app.runtime.metrics import Metrics


def serving_layer_paths(base: FrozenBase) -> list[str]:
    """Every linear layer an adapter may target: all of them except a decoder's LM head."""
    return [p for p in base.linear_shapes if p.split(".")[-1] not in {"lm_head"}]


def input_token_limit(base: FrozenBase, settings: Settings) -> int:
    """Tokens per input: the setting, never past the positions the base was trained with."""
    positions = getattr(base.config, "max_position_embeddings", None)
    limit = settings.max_input_tokens
    return min(limit, int(positions)) if positions else limit


class Runtime:
    """The serving path of one base: built once at start-up, shared by every request."""

    def __init__(
        self, base: FrozenBase, registry: Registry, settings: Settings, metrics: Metrics
    ) -> None:
        self.base = base
        self.registry = registry
        self.metrics = metrics
        layer_set = DecoderLayerSet if base.kind == "decoder" else LayerSet
        self.layers = layer_set(base.model, serving_layer_paths(base))
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
            base,
            self.layers,
            self.cache,
            max_tokens=input_token_limit(base, settings),
            truncate=settings.truncate_inputs,
            max_batch_rows=settings.max_batch_size,
        )
        self.batcher = Batcher(
            self.engine.run,
            max_batch_rows=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_rows=settings.queue_size,
            metrics=metrics,
        )
        self._yield_s = settings.trainer_yield_ms / 1000.0
        # Decoders also generate: prefill + KV-cache decoding with its own continuous batching.
        self.generation = (
            GenerationService(base, self.layers, self.cache, settings, metrics)
            if base.kind == "decoder"
            else None
        )

    def delete_adapter(self, name: str, version: int | None = None) -> list[int]:
        """Delete one version or all from the store and the cache; the versions removed."""
        return self.registry.delete(name, version, residency=self.cache)

    def pin_adapter(self, name: str, pinned: bool) -> int:
        """Pin (loading it) or unpin the latest version of `name`; returns that version."""
        return self.registry.set_pinned(name, pinned, residency=self.cache)

    def yield_to_requests(self) -> None:
        """Called by trainers between steps: wait (bounded) while requests are queued.

        Training and inference share the CPU; without this a training step would hold the
        cores while requests wait, and inference latency during training would balloon.
        """
        deadline = time.monotonic() + self._yield_s
        while self.pending_rows > 0 and time.monotonic() < deadline:
            time.sleep(0.002)

    @property
    def pending_rows(self) -> int:
        """Rows waiting for, or (generation) in the middle of, a forward."""
        generating = self.generation.scheduler.pending_rows if self.generation is not None else 0
        return self.batcher.pending_rows + generating

    def start(self) -> None:
        """Start the batch workers (inside the running event loop)."""
        self.batcher.start()
        if self.generation is not None:
            self.generation.start()

    async def stop(self) -> None:
        """Stop the workers; queued callers get a 503."""
        await self.batcher.stop()
        if self.generation is not None:
            await self.generation.stop()

    def warm_up(self) -> None:
        """One pass of the path this base serves, so the first request pays no lazy set-up."""
        if self.generation is not None:
            self.generation.warm_up()
        else:
            self.engine.warm_up()

    async def generate(
        self, name: str | None, version: int | None, inputs: list[Any], params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """`{"generated_text"}` per input with adapter (name, version), or the bare base."""
        if self.generation is None:
            raise bad_request("unsupported_task", "generation needs a decoder base", param="name")
        key = (name, int(version)) if name is not None and version is not None else None
        return await self.generation.generate(key, inputs, params)
