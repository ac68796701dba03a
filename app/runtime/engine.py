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

from app.base import BaseModel as Base
from app.errors import SwitchyardError, bad_request
from app.runtime.cache import AdapterCache, Key, Resident
from app.runtime.layers import LayerSet
from app.tasks import EMBEDDINGS, TOKEN_CLASSIFICATION, classification, token_classification


@dataclass
class EncodedRow:
    """One tokenized input."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    text: str = ""
    offsets: list[tuple[int, int]] = field(default_factory=list)
    word_ids: list[int | None] = field(default_factory=list)


@dataclass
class Job:
    """One request's rows for one adapter (or the bare base when `key` is None)."""

    key: Key | None
    task: str
    rows: list[EncodedRow]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    """Outputs of one job, or the error that failed only this job."""

    outputs: list[Any] | None = None
    error: SwitchyardError | None = None


class Engine:
    """Runs batches of jobs over the shared base; one forward at a time."""

    def __init__(self, base: Base, layers: LayerSet, cache: AdapterCache, *, max_tokens: int,
                 truncate: bool, max_batch_rows: int) -> None:
        self.base = base
        self.layers = layers
        self.cache = cache
        self.max_tokens = max_tokens
        self.truncate = truncate
        self.max_batch_rows = max_batch_rows
        self._lock = threading.Lock()
        self._has_pooler = getattr(base.model, "pooler", None) is not None

    # ---------------------------------------------------------------- inputs
    def prepare(self, inputs: list[Any], *, task: str) -> list[EncodedRow]:
        """Tokenize request inputs; 400 for a malformed or (when not truncating) too long one."""
        rows = []
        for index, item in enumerate(inputs):
            text, pair = _split_input(item, index)
            enc = self.base.tokenizer(
                text, pair, truncation=self.truncate, max_length=self.max_tokens,
                return_offsets_mapping=task == TOKEN_CLASSIFICATION,
            )
            ids = list(enc["input_ids"])
            if len(ids) > self.max_tokens:
                raise bad_request(
                    "input_too_long",
                    f"input {index} has {len(ids)} tokens > max_input_tokens {self.max_tokens}",
                    param=f"inputs[{index}]",
                )
            row = EncodedRow(ids, enc.get("token_type_ids"), text=text)
            if task == TOKEN_CLASSIFICATION:
                row.offsets = [tuple(o) for o in enc["offset_mapping"]]  # type: ignore[misc]
                row.word_ids = enc.word_ids()
            rows.append(row)
        return rows

    # ---------------------------------------------------------------- running
    def run(self, jobs: list[Job]) -> list[JobResult]:
        """Run jobs together; an adapter that fails to load fails only its own jobs."""
        results = [JobResult() for _ in jobs]
        residents: dict[Key, Resident] = {}
        errors: dict[Key, SwitchyardError] = {}
        try:
            for job in jobs:
                key = job.key
                if key is not None and key not in residents and key not in errors:
                    try:
                        residents[key] = self.cache.acquire(*key)
                    except SwitchyardError as exc:
                        errors[key] = exc
            for i, job in enumerate(jobs):
                if job.key is not None and job.key in errors:
                    results[i].error = errors[job.key]
            runnable = [(i, job) for i, job in enumerate(jobs) if results[i].error is None]
            self._run_chunks(runnable, residents, results)
        finally:
            for resident in residents.values():
                self.cache.release(resident)
        return results

    def _run_chunks(
        self, runnable: list[tuple[int, Job]], residents: dict[Key, Resident],
        results: list[JobResult],
    ) -> None:
        flat = [(i, r) for i, job in runnable for r in range(len(job.rows))]
        outputs: dict[int, list[Any]] = {i: [None] * len(job.rows) for i, job in runnable}
        by_index = dict(runnable)
        for start in range(0, len(flat), self.max_batch_rows):
            chunk = flat[start : start + self.max_batch_rows]
            decoded = self._forward(chunk, by_index, residents)
            for (i, r), value in zip(chunk, decoded, strict=True):
                outputs[i][r] = value
        for i, _job in runnable:
            results[i].outputs = outputs[i]

    def _forward(
        self, chunk: list[tuple[int, int]], jobs: dict[int, Job], residents: dict[Key, Resident]
    ) -> list[Any]:
        rows = [jobs[i].rows[r] for i, r in chunk]
        slots = [residents[jobs[i].key].slot if jobs[i].key else 0 for i, _ in chunk]  # type: ignore[index]
        need_hidden = any(_needs_hidden(jobs[i], residents) for i, _ in chunk)
        batch = self._collate(rows)
        with self._lock, torch.inference_mode():
            self.layers.route(slots, self.base.device)
            try:
                out = self.base.model(**batch, output_hidden_states=need_hidden)
            finally:
                self.layers.clear_route()
        features = _Features(out, batch["attention_mask"], self._has_pooler)
        decoded: list[Any] = [None] * len(chunk)
        groups: dict[int, list[int]] = {}
        for position, (i, _r) in enumerate(chunk):
            groups.setdefault(i, []).append(position)
        for i, positions in groups.items():
            job = jobs[i]
            resident = residents[job.key] if job.key else None
            values = self._decode(job, resident, features, positions, [rows[p] for p in positions])
            for position, value in zip(positions, values, strict=True):
                decoded[position] = value
        return decoded

    def _collate(self, rows: list[EncodedRow]) -> dict[str, torch.Tensor]:
        width = max(len(r.input_ids) for r in rows)
        pad = int(self.base.tokenizer.pad_token_id or 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for n, row in enumerate(rows):
            ids[n, : len(row.input_ids)] = torch.tensor(row.input_ids)
            mask[n, : len(row.input_ids)] = 1
            if row.token_type_ids is not None:
                types[n, : len(row.token_type_ids)] = torch.tensor(row.token_type_ids)
        batch = {"input_ids": ids, "attention_mask": mask}
        if rows[0].token_type_ids is not None:
            batch["token_type_ids"] = types
        return {k: v.to(self.base.device) for k, v in batch.items()}

    def _decode(
        self, job: Job, resident: Resident | None, features: _Features, positions: list[int],
        rows: list[EncodedRow],
    ) -> list[Any]:
        if job.task == EMBEDDINGS:
            layers = list(job.params.get("layers", [-1]))
            pooled = features.pooled(positions, layers, job.params.get("pooling", "mean"), concat=False)
            if job.params.get("normalize", True):
                pooled = F.normalize(pooled, dim=-1)
            return [v for v in pooled.float().tolist()]
        if resident is None:
            raise bad_request("adapter_required", f"task {job.task!r} needs an adapter", param="adapter")
        weights, head = resident.weights, resident.head
        if weights.method == "linear_probe":
            x = features.pooled(positions, weights.probe_layers, weights.pooling, concat=True)
        elif job.task == TOKEN_CLASSIFICATION:
            x = features.last[positions]
        else:
            x = features.sentence(positions)
        logits = F.linear(x.to(head["weight"].dtype), head["weight"], head["bias"])
        if job.task != TOKEN_CLASSIFICATION:
            return classification.decode(logits, task=job.task, labels=weights.labels, params=job.params)
        return [
            token_classification.decode_entities(
                logits[n, : len(row.input_ids)], labels=weights.labels, text=row.text,
                offsets=row.offsets, word_ids=row.word_ids,
            )
            for n, row in enumerate(rows)
        ]

    def warm_up(self) -> None:
        """One forward so the first request does not pay for lazy initialisation."""
        rows = self.prepare(["warm up"], task="classification")
        self.run([Job(key=None, task=EMBEDDINGS, rows=rows)])


class _Features:
    """Lazily pooled views of one forward's outputs."""

    def __init__(self, out: Any, mask: torch.Tensor, has_pooler: bool) -> None:
        self.out = out
        self.mask = mask
        self.has_pooler = has_pooler

    @property
    def last(self) -> torch.Tensor:
        return self.out.last_hidden_state  # type: ignore[no-any-return]

    def sentence(self, positions: list[int]) -> torch.Tensor:
        """What a *ForSequenceClassification head reads: the pooler, else the first token."""
        if self.has_pooler and self.out.pooler_output is not None:
            return self.out.pooler_output[positions]  # type: ignore[no-any-return]
        return self.last[positions, 0]

    def pooled(self, positions: list[int], layers: list[int], pooling: str, *, concat: bool) -> torch.Tensor:
        states = self.out.hidden_states if self.out.hidden_states is not None else (self.last,)
        mask = self.mask[positions].unsqueeze(-1).to(self.last.dtype)
        parts = [pool(states[layer][positions], mask, pooling) for layer in layers]
        return torch.cat(parts, dim=-1) if concat else torch.stack(parts).mean(dim=0)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Masked mean, first token, or masked max over the sequence."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _needs_hidden(job: Job, residents: dict[Key, Resident]) -> bool:
    if job.task == EMBEDDINGS:
        return list(job.params.get("layers", [-1])) != [-1]
    resident = residents.get(job.key) if job.key else None
    return bool(resident and resident.weights.method == "linear_probe")


def _split_input(item: Any, index: int) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        pair = item.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise bad_request("invalid_input", f"inputs[{index}].text_pair must be a string",
                              param=f"inputs[{index}]")
        return item["text"], pair
    raise bad_request(
        "invalid_input", f"inputs[{index}] must be a string or {{'text', 'text_pair'}}",
        param=f"inputs[{index}]",
    )
