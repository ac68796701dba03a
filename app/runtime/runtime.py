"""The serving facade of one base: the only way in for inference and for registry operations
that touch both the store and the resident adapters.

`predict`, `embed`, `generate` and `stream` resolve adapters through the registry, pass the
one admission gate (`app.runtime.admission`), queue on the encoder or decoder batcher and
return typed results; the routes only translate HTTP to these calls and back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from app.base import FrozenBase
from app.config import Settings
from app.errors import SwitchyardError, bad_request
from app.registry import lineage
from app.registry.catalog import Registry
from app.registry.lineage import Deleted
from app.registry.records import AdapterMeta, AdapterRef
from app.registry.store import check_name
from app.runtime.admission import BASE_LABEL, Admission
from app.runtime.cache import AdapterCache, CacheLimits
from app.runtime.decoder_batcher import DecoderBatcher
from app.runtime.encoder_batcher import EncoderBatcher
from app.runtime.engine import EncoderEngine, EncodeRequest
from app.runtime.generation import DecoderEngine, DecoderLayerSet, GenOutput
from app.runtime.inputs import check_input_keys, check_parameter_names
from app.runtime.layers import LayerSet
from app.runtime.metrics import Metrics
from app.runtime.streaming import GenerationStream
from app.runtime.tokenize import TextBatch
from app.tasks import EMBEDDINGS, Readout, classification, get_task


def serving_layer_paths(base: FrozenBase) -> list[str]:
    """Every linear layer an adapter may target: all of them except a decoder's LM head."""
    return [p for p in base.linear_shapes if p.split(".")[-1] not in {"lm_head"}]


def input_token_limit(base: FrozenBase, settings: Settings) -> int:
    """Tokens per input: the setting, never past the positions the base was trained with."""
    positions = getattr(base.config, "max_position_embeddings", None)
    limit = settings.max_input_tokens
    return min(limit, int(positions)) if positions else limit


@dataclass(frozen=True)
class Prediction:
    """One adapter's outputs over a request's inputs."""

    meta: AdapterMeta
    outputs: list[Any]


@dataclass(frozen=True)
class Pooling:
    """How `embed` turns hidden states into one vector per input."""

    layers: tuple[int, ...] = (-1,)
    method: str = "mean"  # mean, cls or max
    normalize: bool = True


@dataclass(frozen=True)
class Embeddings:
    """One vector per input and the tokens they took."""

    vectors: list[list[float]]
    tokens: int


class Runtime:
    """The serving path of one base: built once at start-up, shared by every request."""

    def __init__(
        self, base: FrozenBase, registry: Registry, settings: Settings, metrics: Metrics
    ) -> None:
        layer_set = DecoderLayerSet if base.kind == "decoder" else LayerSet
        layers = layer_set(base.model, serving_layer_paths(base))
        cache = AdapterCache(
            layers,
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
        self.base, self.registry, self.metrics = base, registry, metrics
        self.layers, self.cache = layers, cache
        self.admission = Admission(
            max_inputs=settings.max_inputs_per_request,
            timeout_s=settings.request_timeout_s,
            metrics=metrics,
        )
        self.encoder = EncoderEngine(
            base,
            layers,
            cache,
            max_tokens=input_token_limit(base, settings),
            truncate=settings.truncate_inputs,
            max_batch_rows=settings.max_batch_size,
            pack_max_tokens=settings.pack_max_tokens,
            pack_max_adapters=settings.pack_max_adapters,
        )
        self.encoder_batcher = EncoderBatcher(
            self.encoder.run,
            max_batch_rows=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_rows=settings.queue_size,
            metrics=metrics,
        )
        # Decoders also generate: prefill + KV-cache decoding with its own continuous batching.
        self.decoder, self.decoder_batcher = _decoder_path(base, layers, cache, settings, metrics)
        self._yield_s = settings.trainer_yield_ms / 1000.0

    # ---------------------------------------------------------------- store and cache
    def delete_adapter(self, name: str, version: int | None = None) -> list[int]:
        """Delete one version or all from the store and the cache; the versions removed."""
        return self.registry.delete(name, version, residency=self.cache)

    def delete_tree(self, name: str, version: int | None, *, cascade: bool) -> Deleted:
        """`delete_adapter`, refused (409) while stacks were built on what it deletes, unless
        `cascade`, which deletes those children too (app/registry/lineage.py)."""
        return lineage.delete(self.registry, name, version, residency=self.cache, cascade=cascade)

    def pin_adapter(self, name: str, pinned: bool) -> dict[str, Any]:
        """Pin (loading it) or unpin the latest version of `name`; its summary afterwards."""
        version = self.registry.set_pinned(name, pinned, residency=self.cache)
        return {**self.registry.summary(name), "resident": self.cache.residency(name, version)}

    def adapter_summaries(self) -> list[dict[str, Any]]:
        """Every adapter's latest version with its residency; damaged or just-deleted ones are
        left out (they fail on their own requests)."""
        out = []
        for name in self.registry.names():
            try:
                item = self.registry.summary(name)
            except SwitchyardError:
                continue
            out.append({**item, "resident": self.cache.residency(name, item["latest_version"])})
        return out

    def adapter_details(self, name: str) -> dict[str, Any]:
        """All versions of `name` with their metadata, and the latest one's residency."""
        details = self.registry.details(name)
        return {**details, "resident": self.cache.residency(name, details["latest_version"])}

    # ---------------------------------------------------------------- lifecycle
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
        decoding = self.decoder_batcher.pending_rows if self.decoder_batcher is not None else 0
        return self.encoder_batcher.pending_rows + decoding

    def start(self) -> None:
        """Start the batch workers (inside the running event loop)."""
        self.encoder_batcher.start()
        if self.decoder_batcher is not None:
            self.decoder_batcher.start()

    async def stop(self) -> None:
        """Stop the workers; queued callers get a 503."""
        await self.encoder_batcher.stop()
        if self.decoder_batcher is not None:
            await self.decoder_batcher.stop()

    def warm_up(self) -> None:
        """One pass of the path this base serves, so the first request pays no lazy set-up."""
        if self.decoder is not None:
            self.decoder.warm_up()
        else:
            self.encoder.warm_up()

    # ---------------------------------------------------------------- encoder
    async def predict(
        self, name: str, inputs: list[Any], params: dict[str, Any], version: int | None = None
    ) -> Prediction:
        """Pipeline-shaped outputs of one adapter version (latest when None), one per input."""
        return await self._predict(self.registry.meta(check_name(name), version), inputs, params)

    async def predict_many(
        self, names: list[str], inputs: list[Any], params: dict[str, Any]
    ) -> list[Prediction]:
        """Several adapters (latest versions) over the same inputs; on an encoder one batch
        for all of them, so head-only adapters over the same inputs share one base pass."""
        metas = [self.registry.meta(check_name(name)) for name in names]
        if self.base.kind != "encoder":
            return list(await asyncio.gather(*(self._predict(m, inputs, params) for m in metas)))
        check_parameter_names(params, (meta.task for meta in metas))
        classification.check_params(params)
        rows: dict[str, TextBatch] = {}  # tokenized once per task
        for meta in metas:
            if meta.task not in rows:
                rows[meta.task] = self._encode(inputs, meta.task)
        requests = [
            EncodeRequest(key=m.ref, task=m.task, rows=[], text=rows[m.task], params=params)
            for m in metas
        ]
        start = time.perf_counter()
        results = await self.admission.bounded(self.encoder_batcher.submit_group(requests))
        elapsed = time.perf_counter() - start
        for meta, result in zip(metas, results, strict=True):
            status = result.error.code if result.error is not None else "ok"
            self.admission.record(meta.name, status, elapsed)
            if result.error is not None:
                raise result.error
        return [Prediction(m, r.outputs or []) for m, r in zip(metas, results, strict=True)]

    async def _predict(
        self, meta: AdapterMeta, inputs: list[Any], params: dict[str, Any]
    ) -> Prediction:
        if get_task(meta.task).readout is Readout.TEXT:
            outputs = await self.generate(meta.ref, inputs, params, param="name")
            return Prediction(meta, [{"generated_text": out.text} for out in outputs])
        check_parameter_names(params, [meta.task])
        classification.check_params(params)
        text = self._encode(inputs, meta.task)
        request = EncodeRequest(key=meta.ref, task=meta.task, rows=[], text=text, params=params)
        outputs = await self.admission.run(self.encoder_batcher.submit(request), label=meta.name)
        return Prediction(meta, outputs)

    async def embed(self, texts: list[str], *, adapter: str | None, pooling: Pooling) -> Embeddings:
        """Pooled hidden states of the base, or of the base with `adapter`'s deltas applied."""
        ref = self.registry.meta(check_name(adapter)).ref if adapter is not None else None
        for layer in pooling.layers:
            if not -self.base.num_layers - 1 <= layer <= self.base.num_layers:
                raise bad_request("invalid_layer", f"layer {layer} is out of range", param="layers")
        params = {
            "layers": list(pooling.layers),
            "pooling": pooling.method,
            "normalize": pooling.normalize,
        }
        text = self._encode(texts, EMBEDDINGS)
        request = EncodeRequest(key=ref, task=EMBEDDINGS, rows=[], text=text, params=params)
        vectors = await self.admission.run(
            self.encoder_batcher.submit(request), label=adapter or BASE_LABEL
        )
        return Embeddings(vectors, sum(len(r.input_ids) for r in request.rows))

    def _encode(self, inputs: list[Any], task: str) -> TextBatch:
        self.admission.check_inputs(len(inputs))
        if self.base.kind != "encoder":
            raise bad_request(
                "unsupported_task", f"task {task!r} needs an encoder base", param="task"
            )
        check_input_keys(inputs)
        # Only shapes are checked here; the batch worker tokenizes (app/runtime/tokenize.py).
        return self.encoder.defer(inputs, task=task)

    # ---------------------------------------------------------------- decoder
    def generation_adapter(self, model: str | None) -> AdapterRef | None:
        """The latest version of generation adapter `model`; None for the bare base."""
        if model is None or model == BASE_LABEL:
            return None
        meta = self.registry.meta(check_name(model))
        if get_task(meta.task).readout is not Readout.TEXT:
            raise bad_request(
                "unsupported_task",
                f"adapter {model!r} is a {meta.task} adapter, not generation",
                param="model",
            )
        return meta.ref

    async def generate(
        self,
        ref: AdapterRef | None,
        inputs: list[Any],
        params: dict[str, Any],
        *,
        param: str = "model",
    ) -> list[GenOutput]:
        """Generate for every input with one adapter version (None: the bare base); `param`
        names the request field a 400 blames when this base cannot generate."""
        decoder, batcher = self.require_decoder(param)
        self.admission.check_inputs(len(inputs))
        request = decoder.prepare(ref, inputs, params)
        return await self.admission.run(batcher.submit(request), label=_label(ref))

    def stream(
        self, ref: AdapterRef | None, inputs: list[Any], params: dict[str, Any]
    ) -> GenerationStream:
        """Queue a request whose text comes as it decodes; 4xx (429 included) before anything
        is sent. Must be called on the event loop; iterate the stream's `events()`."""
        decoder, batcher = self.require_decoder("model")
        self.admission.check_inputs(len(inputs))
        request = decoder.prepare(ref, inputs, params)
        finish = self.admission.recorder(_label(ref))
        tokenizer = decoder.base.tokenizer
        stream = GenerationStream(
            request,
            decode=lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
            timeout_s=self.admission.timeout_s,
            on_end=finish,
        )
        try:
            stream.attach(batcher.enqueue(request))
        except SwitchyardError as exc:
            finish(exc.code)
            raise
        return stream

    def require_decoder(self, param: str = "model") -> tuple[DecoderEngine, DecoderBatcher]:
        """The decoder path; 400 `unsupported_task` naming `param` on an encoder base."""
        if self.decoder is None or self.decoder_batcher is None:
            raise bad_request("unsupported_task", "generation needs a decoder base", param=param)
        return self.decoder, self.decoder_batcher


def _label(ref: AdapterRef | None) -> str:
    return ref.name if ref is not None else BASE_LABEL


def _decoder_path(
    base: FrozenBase, layers: LayerSet, cache: AdapterCache, settings: Settings, metrics: Metrics
) -> tuple[DecoderEngine | None, DecoderBatcher | None]:
    if base.kind != "decoder":
        return None, None
    engine = DecoderEngine(
        base,
        layers,
        cache,
        max_new_tokens=settings.max_new_tokens,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_batch_rows=settings.max_batch_size,
    )
    batcher = DecoderBatcher(
        engine, max_wait_ms=settings.max_wait_ms, queue_rows=settings.queue_size, metrics=metrics
    )
    return engine, batcher
