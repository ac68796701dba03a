"""The generation engine: prefill and KV-cache decoding over the shared, wrapped decoder.

Rows of one batch may use different LoRA adapters (a slot per row, routed through the same
`LayerSet` as the encoder engine), different prefix adapters (virtual key/values at the head
of their row's cache) or none. Batching is continuous: between decode steps finished rows
leave the batch, so they stop costing, and waiting rows are prefilled and merged in, so a long
generation does not hold new requests back. All of it runs on one thread; `tick` is one step.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from app.base import FrozenBase
from app.errors import SwitchyardError, bad_request
from app.methods import decoder_methods
from app.registry.records import AdapterRef
from app.registry.weights import AdapterWeights
from app.runtime.cache import AdapterCache, Resident
from app.runtime.decode_batch import KVBatch, Prefix, prefill_inputs
from app.runtime.layers import LayerSet
from app.runtime.sampling import (
    GenerationParams,
    RowSampler,
    choose_tokens,
    find_stop,
    parse_params,
)
from app.tasks.generation import prompt_ids

SERVABLE_METHODS = decoder_methods(stored=True)


class DecoderLayerSet(LayerSet):
    """The wrapped layers of a decoder base, where prefixes live in the KV cache instead.

    The shared `LayerSet` stores prefixes for its patched encoder self-attention only and
    refuses them elsewhere. On a decoder the generation engine puts a prefix adapter's
    key/values at the head of its rows' cache (read from the resident adapter per job), so the
    slot keeps the adapter's other parts and the prefix is left out of it.
    """

    def load(self, slot: int, weights: AdapterWeights) -> None:
        if weights.prefix and self.prefixes is None:
            weights = replace(weights, prefix=[])
        super().load(slot, weights)


@dataclass
class GenOutput:
    """One finished row."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int


class RowListener(Protocol):
    """Told of a job's rows as they decode (streaming); called on the engine's thread."""

    def token(self, index: int, generated: list[int]) -> None:
        """Row `index` has generated `generated` so far and goes on."""

    def finish(self, index: int, output: GenOutput) -> None:
        """Row `index` has finished with `output`."""


@dataclass
class GenerateRequest:
    """One request's rows for one adapter (`key` None: the bare base), same parameters."""

    key: AdapterRef | None
    prompts: list[list[int]]
    params: GenerationParams
    texts: list[str | None] = field(default_factory=list)  # plain prompts, for full text
    outputs: list[GenOutput | None] = field(default_factory=list)
    error: SwitchyardError | None = None
    cancelled: bool = False  # set by the caller's side when it stops waiting
    listener: RowListener | None = None  # streaming: told of each token as it decodes
    resident: Resident | None = None
    prefix: Prefix | None = None
    admitted: int = 0  # rows prefilled so far
    done: int = 0  # rows finished
    ended: bool = False  # left the engine (finished, failed or cancelled)

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.prompts)

    @property
    def slot(self) -> int:
        """The LoRA slot of this job's rows; 0 (no delta) for prefix adapters and the base."""
        return self.resident.slot if self.resident is not None else 0


@dataclass
class _Row:
    job: GenerateRequest
    index: int
    sampler: RowSampler
    generated: list[int] = field(default_factory=list)
    positions: int = 0  # real tokens in the cache and input so far (prefix + prompt + output)


class DecoderEngine:
    """Prefill + decode loop for a continuously changing batch of generation rows."""

    def __init__(
        self,
        base: FrozenBase,
        layers: LayerSet,
        cache: AdapterCache,
        *,
        max_new_tokens: int,
        max_prompt_tokens: int,
        max_batch_rows: int,
    ) -> None:
        self.base = base
        self.layers = layers
        self.cache = cache
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_batch_rows = max_batch_rows
        self.eos_ids = _eos_ids(base)
        self.max_positions = int(getattr(base.config, "max_position_embeddings", 0) or 1 << 30)
        self.pad_id = int(base.tokenizer.pad_token_id or 0)
        # transformers 5 renamed `past_key_values` to `cache`; the old name warns on each call.
        params = inspect.signature(base.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._lock = threading.Lock()  # one forward over the shared wrapped layers at a time
        self._pending: deque[GenerateRequest] = deque()
        self._rows: list[_Row] = []
        self._state: KVBatch | None = None
        self._finished: list[GenerateRequest] = []

    # ---------------------------------------------------------------- requests
    def prepare(
        self, ref: AdapterRef | None, inputs: list[Any], raw: dict[str, Any]
    ) -> GenerateRequest:
        """Tokenize and check a request on the caller's side; 400s fail it before it queues."""
        params = parse_params(raw, max_new_tokens=self.max_new_tokens)
        prompts, texts = [], []
        for i, item in enumerate(inputs):
            ids = prompt_ids(self.base.tokenizer, item, param=f"inputs[{i}]")
            self._check_prompt(ids, params, param=f"inputs[{i}]")
            prompts.append(ids)
            texts.append(item if isinstance(item, str) else item.get("prompt"))
        return GenerateRequest(key=ref, prompts=prompts, params=params, texts=texts)

    def _check_prompt(self, ids: list[int], params: GenerationParams, *, param: str) -> None:
        if not ids:
            raise bad_request("empty_prompt", f"{param} has no tokens", param=param)
        if len(ids) > self.max_prompt_tokens:
            raise bad_request(
                "prompt_too_long",
                f"{param} has {len(ids)} tokens > max_prompt_tokens {self.max_prompt_tokens}",
                param=param,
            )
        if len(ids) + params.max_new_tokens > self.max_positions:
            raise bad_request(
                "context_length_exceeded",
                f"{param}: {len(ids)} prompt tokens + max_new_tokens {params.max_new_tokens} > "
                f"the base's {self.max_positions} positions",
                param=param,
            )

    @property
    def busy(self) -> bool:
        """Rows are decoding or waiting for room."""
        return bool(self._rows or self._pending)

    @property
    def active_rows(self) -> int:
        return len(self._rows)

    # ---------------------------------------------------------------- the loop
    def tick(self, new_jobs: list[GenerateRequest]) -> list[GenerateRequest]:
        """Take new jobs, admit rows while there is room, decode one step; return ended jobs."""
        with torch.inference_mode():
            for job in new_jobs:
                self._accept(job)
            self._drop_cancelled()
            self._admit()
            self._step()
        finished, self._finished = self._finished, []
        return finished

    def run(self, jobs: list[GenerateRequest]) -> list[GenerateRequest]:
        """Run jobs to completion on this thread (tests, benchmarks, the CLI)."""
        self.tick(jobs)
        while self.busy:
            self.tick([])
        return jobs

    def abort(self, error: SwitchyardError) -> list[GenerateRequest]:
        """Fail every job in flight (a bug in a step must not wedge the engine)."""
        jobs = {id(r.job): r.job for r in self._rows} | {id(j): j for j in self._pending}
        self._rows, self._state, self._pending = [], None, deque()
        for job in jobs.values():
            job.error = job.error or error
            self._end(job)
        finished, self._finished = self._finished, []
        return finished

    def warm_up(self) -> None:
        """One short generation so the first request does not pay for lazy initialisation."""
        job = self.prepare(None, ["warm up"], {"max_new_tokens": 2})
        self.run([job])

    # ---------------------------------------------------------------- admission
    def _accept(self, job: GenerateRequest) -> None:
        try:
            if job.key is not None:
                job.resident = self.cache.acquire(*job.key)
                self._attach(job, job.resident)
        except SwitchyardError as exc:
            job.error = exc
            self._end(job)
            return
        self._pending.append(job)

    def _attach(self, job: GenerateRequest, resident: Resident) -> None:
        weights = resident.weights
        if weights.method not in SERVABLE_METHODS:
            raise bad_request(
                "unsupported_method",
                f"adapter {resident.key.name!r} is {weights.method}; generation serves "
                f"{list(SERVABLE_METHODS)}",
                param="name",
            )
        if weights.prefix:  # a prefix adapter: its keys/values go in front of the KV cache
            job.prefix = torch.stack([torch.stack(kv) for kv in weights.prefix]).to(
                device=self.base.device, dtype=self.base.dtype
            )

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._pending if j.cancelled]:
            self._pending.remove(job)
            self._end(job)
        keep = [n for n, row in enumerate(self._rows) if not row.job.cancelled]
        if len(keep) < len(self._rows):
            for job in {id(r.job): r.job for r in self._rows if r.job.cancelled}.values():
                self._end(job)
            self._keep(keep)

    def _admit(self) -> None:
        room = self.max_batch_rows - len(self._rows)
        taken: list[_Row] = []
        while self._pending and room > 0:
            job = self._pending[0]
            count = min(room, len(job.prompts) - job.admitted)
            taken += [
                _Row(job, job.admitted + i, RowSampler(job.params, self.base.device))
                for i in range(count)
            ]
            job.admitted += count
            room -= count
            if job.admitted == len(job.prompts):
                self._pending.popleft()
        if taken:
            self._prefill(taken)

    def _prefill(self, rows: list[_Row]) -> None:
        prompts = [r.job.prompts[r.index] for r in rows]
        prefixes = [r.job.prefix for r in rows]
        ids, mask, positions, cache = prefill_inputs(
            prompts, prefixes, pad_id=self.pad_id, device=self.base.device, dtype=self.base.dtype
        )
        logits = self._forward(ids, mask, positions, cache, [r.job.slot for r in rows])
        for row, real in zip(rows, mask.sum(dim=-1).tolist(), strict=True):
            row.positions = int(real)
        state = KVBatch(cache, mask, ids[:, -1])
        keep = self._advance(rows, logits, state, mask)
        state.select(keep)
        rows = [rows[n] for n in keep]
        if not rows:
            return
        if self._state is None:
            self._state, self._rows = state, rows
        else:
            self._state.merge(state)
            self._rows += rows

    # ---------------------------------------------------------------- decoding
    def _step(self) -> None:
        state = self._state
        if state is None or not self._rows:
            return
        ids, mask, positions = state.step_inputs()
        logits = self._forward(ids, mask, positions, state.cache, [r.job.slot for r in self._rows])
        for row in self._rows:
            row.positions += 1
        self._keep(self._advance(self._rows, logits, state, mask))

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        slots: list[int],
    ) -> torch.Tensor:
        with self._lock:
            self.layers.route(slots, self.base.device)
            try:
                out = self.base.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kw: cache},
                )
            finally:
                self.layers.clear_route()
        return out.logits[:, -1].float()

    def _advance(
        self, rows: list[_Row], logits: torch.Tensor, state: KVBatch, mask: torch.Tensor
    ) -> list[int]:
        """Choose each row's token, finish rows that are done; the indices that go on."""
        tokens = choose_tokens(logits, [r.sampler for r in rows])
        state.commit(mask, tokens)
        return [
            n
            for n, (row, token) in enumerate(zip(rows, tokens, strict=True))
            if self._append(row, token)
        ]

    def _append(self, row: _Row, token: int) -> bool:
        """Record one token; False when the row has finished."""
        params = row.job.params
        if token in self.eos_ids and not params.ignore_eos:
            return self._finish(row, "stop")
        row.generated.append(token)
        if params.stop:
            text = self._decode(row.generated)
            cut = find_stop(text, params.stop)
            if cut is not None:
                return self._finish(row, "stop", text[:cut])
        if len(row.generated) >= params.max_new_tokens or row.positions >= self.max_positions:
            return self._finish(row, "length")
        if row.job.listener is not None:
            row.job.listener.token(row.index, row.generated)
        return True

    def _finish(self, row: _Row, reason: str, text: str | None = None) -> bool:
        job = row.job
        text = self._decode(row.generated) if text is None else text
        if job.params.return_full_text and job.texts[row.index] is not None:
            text = str(job.texts[row.index]) + text
        output = GenOutput(
            text=text,
            token_ids=list(row.generated),
            finish_reason=reason,
            prompt_tokens=len(job.prompts[row.index]),
        )
        job.outputs[row.index] = output
        if job.listener is not None:
            job.listener.finish(row.index, output)
        job.done += 1
        if job.done == len(job.prompts):
            self._end(job)
        return False

    def _keep(self, keep: list[int]) -> None:
        self._rows = [self._rows[n] for n in keep]
        if not self._rows:
            self._state = None
        elif self._state is not None:
            self._state.select(keep)

    def _end(self, job: GenerateRequest) -> None:
        """A job leaves the engine: release its adapter once, report it once."""
        if job.ended:
            return
        job.ended = True
        if job.resident is not None:
            self.cache.release(job.resident)
            job.resident = None
        job.prefix = None
        self._finished.append(job)

    def _decode(self, ids: list[int]) -> str:
        return str(self.base.tokenizer.decode(ids, skip_special_tokens=True))


def _eos_ids(base: FrozenBase) -> frozenset[int]:
    """The ids that end a row: what `generate` would stop at (generation config, else tokenizer)."""
    config = getattr(base.model, "generation_config", None)
    eos: Any = getattr(config, "eos_token_id", None)
    eos = base.tokenizer.eos_token_id if eos is None else eos
    ids = [] if eos is None else [eos] if isinstance(eos, int) else eos
    return frozenset(int(e) for e in ids)
