"""The engine: one forward of the frozen encoder for a batch whose rows use different adapters.

Rows are tokenized by the caller (`prepare`), so a bad input fails its own request before it
joins a batch. `run` acquires each adapter once, routes rows to their slots, runs the shared
forward under `inference_mode`, then applies each adapter's head to its own rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from app.base import FrozenBase
from app.errors import SwitchyardError, bad_request
from app.registry.records import AdapterRef
from app.runtime.batch import Features, Layout, build_layout, model_inputs
from app.runtime.batch import pool as pool  # re-exported: training pools the same way
from app.runtime.cache import AdapterCache, Resident
from app.runtime.fill_mask import check_fill_mask, fill_mask
from app.runtime.layers import LayerSet
from app.runtime.lora_products import RowGather
from app.runtime.packing import (
    PackPlan,
    packed_inputs,
    packing_rule,
    plan_packing,
    row_index,
    unpack,
)
from app.runtime.tokenize import EncodedRow, TextBatch, defer, encode_all
from app.tasks import CLASSIFICATION, EMBEDDINGS, Readout, embeddings, get_task, head_task


@dataclass
class EncodeRequest:
    """One request's rows for one adapter (or the bare base when `key` is None)."""

    key: AdapterRef | None
    task: str
    rows: list[EncodedRow]
    params: dict[str, Any] = field(default_factory=dict)
    raw: bool = False  # outputs are per-row logits tensors (tests, diagnostics), not decoded
    # Inputs still to tokenize (in the engine's thread, with the rest of the batch); `rows`
    # is filled from it when the batch runs.
    text: TextBatch | None = None

    @property
    def size(self) -> int:
        """Rows this job adds to a batch."""
        return len(self.text.texts) if self.text is not None else len(self.rows)


@dataclass
class EncodeResult:
    """Outputs of one job, or the error that failed only this job."""

    outputs: list[Any] | None = None
    error: SwitchyardError | None = None


class EncoderEngine:
    """Runs batches of jobs over the shared base; one forward at a time."""

    def __init__(
        self,
        base: FrozenBase,
        layers: LayerSet,
        cache: AdapterCache,
        *,
        max_tokens: int,
        truncate: bool,
        max_batch_rows: int,
        pack_max_tokens: int = 0,
        pack_max_adapters: int = 1,
    ) -> None:
        self.base = base
        self.layers = layers
        self.cache = cache
        self.max_tokens = max_tokens
        self.truncate = truncate
        self.max_batch_rows = max_batch_rows
        self._lock = threading.Lock()
        self._has_pooler = getattr(base.model, "pooler", None) is not None
        self._embed = base.model.get_input_embeddings()
        self._dtype = next(base.model.parameters()).dtype
        limit = getattr(base.config, "max_position_embeddings", None)
        self._max_positions = int(limit) if limit else None
        self.pack_max_tokens = pack_max_tokens
        self.pack_max_adapters = pack_max_adapters
        self._packing = packing_rule(base.model)

    # ---------------------------------------------------------------- inputs
    def prepare(self, inputs: list[Any], *, task: str) -> list[EncodedRow]:
        """Tokenize request inputs now; 400 for a malformed or (when not truncating) too long
        one. The serving path defers instead (`defer`) and tokenizes per batch."""
        batch = self.defer(inputs, task=task)
        self._tokenize([batch])
        if batch.error is not None:
            raise batch.error
        return batch.rows or []

    def defer(self, inputs: list[Any], *, task: str) -> TextBatch:
        """Check the inputs' shape now (400 at submit time); tokenize when the batch runs."""
        # entities need character offsets
        return defer(inputs, per_token=get_task(task).readout is Readout.TOKENS)

    def _tokenize(self, batches: list[TextBatch]) -> None:
        encode_all(self.base.tokenizer, batches, max_tokens=self.max_tokens, truncate=self.truncate)

    # ---------------------------------------------------------------- running
    def run(self, jobs: list[EncodeRequest]) -> list[EncodeResult]:
        """Run jobs together; an adapter that fails to load fails only its own jobs."""
        results = [EncodeResult() for _ in jobs]
        self._tokenize([job.text for job in jobs if job.text is not None])
        for job, result in zip(jobs, results, strict=True):
            if job.text is not None:
                job.rows, result.error = job.text.rows or [], job.text.error
        residents: dict[AdapterRef, Resident] = {}
        errors: dict[AdapterRef, SwitchyardError] = {}
        try:
            for job, result in zip(jobs, results, strict=True):
                key = job.key if result.error is None else None
                if key is not None and key not in residents and key not in errors:
                    try:
                        residents[key] = self.cache.acquire(*key)
                    except SwitchyardError as exc:
                        errors[key] = exc
            for i, job in enumerate(jobs):
                if results[i].error is not None:
                    continue
                if job.key is not None and job.key in errors:
                    results[i].error = errors[job.key]
                elif job.key is not None:
                    results[i].error = self._check_positions(
                        job, residents[job.key]
                    ) or self._check_fill_mask(job, residents[job.key])
            runnable = [(i, job) for i, job in enumerate(jobs) if results[i].error is None]
            self._run_chunks(runnable, residents, results)
        finally:
            for resident in residents.values():
                self.cache.release(resident)
        return results

    def _check_fill_mask(self, job: EncodeRequest, resident: Resident) -> SwitchyardError | None:
        """fill-mask's checks (top_k, a kept head, a mask in every input), per job."""
        if get_task(job.task).readout is not Readout.MASKED:
            return None
        return check_fill_mask(
            job.rows, resident.head, base=self.base, name=resident.key.name, params=job.params
        )

    def _check_positions(self, job: EncodeRequest, resident: Resident) -> SwitchyardError | None:
        """Virtual tokens take positions too: a row must still fit the position table."""
        weights = resident.weights
        virtual = (
            weights.prompt.shape[0]
            if weights.prompt is not None
            else (weights.prefix[0][0].shape[1] if weights.prefix else 0)
        )
        limit = self._max_positions
        if not virtual or limit is None:
            return None
        for index, row in enumerate(job.rows):
            if len(row.input_ids) + virtual > limit:
                return bad_request(
                    "input_too_long",
                    f"input {index} has {len(row.input_ids)} tokens; with the adapter's {virtual} "
                    f"virtual tokens that passes the base's {limit} positions",
                    param=f"inputs[{index}]",
                )
        return None

    def _run_chunks(
        self,
        runnable: list[tuple[int, EncodeRequest]],
        residents: dict[AdapterRef, Resident],
        results: list[EncodeResult],
    ) -> None:
        """Forward each distinct (slot, tokens) row once, then decode every job's rows.

        Rows that run the same forward (head-only probes and bare rows are all slot 0) over the
        same tokens share one row of the batch: several probe adapters over the same inputs
        cost one base pass.
        """
        by_index = dict(runnable)
        members = [(i, r) for i, job in runnable for r in range(len(job.rows))]
        forward, where = _distinct_rows(
            [(by_index[i].rows[r], self._slot(by_index[i], residents)) for i, r in members]
        )
        outputs: dict[int, list[Any]] = {i: [None] * len(job.rows) for i, job in runnable}
        size = self.max_batch_rows
        chunks: list[list[int]] = [[] for _ in range(-(-len(forward) // size))]
        for m, index in enumerate(where):
            chunks[index // size].append(m)
        for c, chunk in enumerate(chunks):
            part = forward[c * size : (c + 1) * size]
            hidden = any(_needs_hidden(by_index[members[m][0]], residents) for m in chunk)
            features = self._forward([row for row, _ in part], [slot for _, slot in part], hidden)
            groups: dict[int, list[int]] = {}
            for m in chunk:
                groups.setdefault(members[m][0], []).append(m)
            for i, group in groups.items():
                job = by_index[i]
                rows = [job.rows[members[m][1]] for m in group]
                resident = residents[job.key] if job.key else None
                values = self._decode(
                    job, resident, features, [where[m] - c * size for m in group], rows
                )
                for m, value in zip(group, values, strict=True):
                    outputs[i][members[m][1]] = value
        for i, _job in runnable:
            results[i].outputs = outputs[i]

    @staticmethod
    def _slot(job: EncodeRequest, residents: dict[AdapterRef, Resident]) -> int:
        return residents[job.key].slot if job.key is not None else 0

    def _forward(self, rows: list[EncodedRow], slots: list[int], need_hidden: bool) -> Features:
        """One forward of the base over rows routed to their slots, packed where that pays."""
        pad = int(self.base.tokenizer.pad_token_id or 0)
        layout = build_layout(rows, slots, self.layers, pad_id=pad, device=self.base.device)
        plan = self._pack_plan(rows, slots, layout)
        with self._lock, torch.inference_mode():
            try:
                if plan is not None:
                    out = self._packed_forward(
                        rows, slots, plan, pad_id=pad, need_hidden=need_hidden
                    )
                else:
                    self.layers.route(slots, self.base.device)
                    inputs = model_inputs(layout, self.layers, self._embed, self._max_positions)
                    out = self.base.model(**inputs, output_hidden_states=need_hidden)
            finally:
                self.layers.clear_route()
        return Features(out, layout, self._has_pooler)

    def _pack_plan(
        self, rows: list[EncodedRow], slots: list[int], layout: Layout
    ) -> PackPlan | None:
        """Packing is exact only without virtual tokens (app/runtime/packing.py). Rows of many
        adapters stay padded: per token, the layers' LoRA products take one pair of small
        products per adapter, and on CPU that costs more than the padding it saves."""
        if self._packing is None or any(layout.starts) or any(layout.prefix_lengths):
            return None
        if len(set(slots) - {0}) > self.pack_max_adapters:
            return None
        return plan_packing([len(row.input_ids) for row in rows], max_tokens=self.pack_max_tokens)

    def _packed_forward(
        self,
        rows: list[EncodedRow],
        slots: list[int],
        plan: PackPlan,
        *,
        pad_id: int,
        need_hidden: bool,
    ) -> Any:
        """The forward over packed bins, its outputs put back in the padded layout."""
        assert self._packing is not None
        device = self.base.device
        index = row_index(plan, device)
        gather = None
        if len(set(slots)) > 1:  # mixed rows: LoRA products row by row (lora_products.py)
            keep = (
                torch.arange(index.shape[1], device=device)[None, :]
                < torch.tensor(plan.lengths, device=device)[:, None]
            )
            gather = RowGather(
                index=index.view(-1),
                keep=keep.reshape(-1, 1).to(self._dtype),
                slot_ids=torch.tensor(slots, dtype=torch.long, device=device),
                longest=index.shape[1],
            )
        self.layers.route(plan.token_slots(slots), device, per_token=True, rows=gather)
        has_types = rows[0].token_type_ids is not None
        inputs = packed_inputs(
            plan,
            [row.input_ids for row in rows],
            [row.token_type_ids for row in rows] if has_types else None,
            rule=self._packing,
            pad_id=pad_id,
            dtype=self._dtype,
            device=device,
        )
        packed = self.base.model(**inputs, output_hidden_states=need_hidden)
        # The pooler (adapted too) runs again on each row's first token, routed by row.
        self.layers.route(slots, device)
        pooler = getattr(self.base.model, "pooler", None) if self._has_pooler else None
        return unpack(packed, index, pooler=pooler)

    def _decode(
        self,
        job: EncodeRequest,
        resident: Resident | None,
        features: Features,
        positions: list[int],
        rows: list[EncodedRow],
    ) -> list[Any]:
        if get_task(job.task).readout is Readout.EMBEDDING:
            params, task = job.params, embeddings.TASK
            pooled = features.pooled(
                positions, task.layers(params), task.pooling(params), concat=False
            )
            return task.decode(pooled, params)
        if resident is None:
            raise bad_request(
                "adapter_required", f"task {job.task!r} needs an adapter", param="adapter"
            )
        weights, head = resident.weights, resident.head
        if get_task(job.task).readout is Readout.MASKED:
            hidden = _token_rows(features.tokens(positions), features, positions, rows)
            return fill_mask(hidden, head=head, rows=rows, base=self.base, params=job.params)
        decoder = head_task(job.task)
        token_task = decoder.readout is Readout.TOKENS
        # Probes and pooled-head LoRA/IA3 read pooled hidden states of their own rows' forward
        # (its deltas applied); every other head reads the pooler (app/registry/pooled_head.py).
        probe = weights.probe_layers or None
        if token_task:
            x = features.tokens(positions, probe)
        elif probe is not None:
            x = features.pooled(positions, probe, weights.pooling, concat=True)
        else:
            x = features.sentence(positions)
        logits = F.linear(x.to(head["weight"].dtype), head["weight"], head["bias"])
        outputs = _token_rows(logits, features, positions, rows) if token_task else logits
        if job.raw:
            return list(outputs)
        return decoder.decode(outputs, labels=weights.labels, params=job.params, rows=rows)

    def warm_up(self) -> None:
        """One forward so the first request does not pay for lazy initialisation."""
        rows = self.prepare(["warm up"], task=CLASSIFICATION)
        self.run([EncodeRequest(key=None, task=EMBEDDINGS, rows=rows)])


def _token_rows(
    logits: torch.Tensor, features: Features, positions: list[int], rows: list[EncodedRow]
) -> list[torch.Tensor]:
    """Each row's own tokens only: virtual prompt positions and padding are dropped."""
    return [
        logits[n, features.starts[p] : features.starts[p] + len(row.input_ids)]
        for n, (p, row) in enumerate(zip(positions, rows, strict=True))
    ]


def _distinct_rows(
    rows: list[tuple[EncodedRow, int]],
) -> tuple[list[tuple[EncodedRow, int]], list[int]]:
    """The distinct (row, slot) pairs by (slot, token ids, token types), ordered by slot, and
    where each of `rows` went among them."""
    unique: dict[tuple[Any, ...], int] = {}
    distinct: list[tuple[EncodedRow, int]] = []
    where: list[int] = []
    for row, slot in rows:
        key = (slot, tuple(row.input_ids), tuple(row.token_type_ids or ()))
        if key not in unique:
            unique[key] = len(distinct)
            distinct.append((row, slot))
        where.append(unique[key])
    # Rows of one adapter side by side: the layers then run one product pair per adapter on
    # views of the batch (app/runtime/lora_products.py) instead of one per row.
    order = sorted(range(len(distinct)), key=lambda d: distinct[d][1])
    rank = {d: n for n, d in enumerate(order)}
    return [distinct[d] for d in order], [rank[w] for w in where]


def _needs_hidden(job: EncodeRequest, residents: dict[AdapterRef, Resident]) -> bool:
    if get_task(job.task).readout is Readout.EMBEDDING:
        return embeddings.TASK.layers(job.params) != [-1]
    resident = residents.get(job.key) if job.key else None
    # The last layer is the forward's own output: only other layers need all hidden states.
    return bool(resident and any(layer != -1 for layer in resident.weights.probe_layers))
