"""Frozen lower layers computed once per run: when an adapter targets only the upper layers of
an encoder, the hidden states below its first adapted layer never change during training.

So they are computed once (no gradient, dropout off) for every training and validation row,
and each later forward of such a row starts at the first adapted layer: the embeddings and the
layers below it are swapped out for the stored states for the length of that forward
(bench/README.md, "Issue 15: training speed"). Rows are looked up by their token ids, so the
loop, the objective and the batches stay as they are; a batch with any row not stored runs
the whole model. The store is bounded in bytes; past the bound there is no cache at all.

Not exact in one respect: a cached row sees no dropout below the first adapted layer (the
uncached run draws dropout masks there in training mode). Evaluation (no dropout) is exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.training.encoding import Example, batch_order

_LAYER = re.compile(r"\.layer\.(\d+)\.")
Key = tuple[int, ...]


def first_adapted_layer(targets: Sequence[str] | None) -> int:
    """The lowest encoder layer index the resolved `targets` name; 0 when they are the method's
    default (every linear layer) or name a module outside the layers (nothing to skip then,
    unless it sits above them: the pooler)."""
    if targets is None:
        return 0
    indexes = []
    for name in targets:
        found = _LAYER.search(name)
        if found is None and "pooler" not in name:
            return 0  # something below or beside the layers is adapted
        if found is not None:
            indexes.append(int(found[1]))
    return min(indexes, default=0)


def stack_of(backbone: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """The embeddings and the layer list of a BERT-like encoder, or None for another shape."""
    embeddings = getattr(backbone, "embeddings", None)
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if isinstance(embeddings, nn.Module) and isinstance(layers, nn.ModuleList):
        return embeddings, layers
    return None


class _Given(nn.Module):
    """Stands in for the embeddings: returns the stored hidden states of the batch."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        return self.hidden


@contextmanager
def _layers_only(backbone: nn.Module, keep: slice, given: torch.Tensor | None) -> Iterator[None]:
    """For the block, the backbone runs only its layers `keep`, from `given` states when set."""
    embeddings, layers = stack_of(backbone) or (None, None)
    assert embeddings is not None and layers is not None
    encoder: Any = backbone.encoder
    backbone_any: Any = backbone
    encoder.layer = nn.ModuleList(list(layers)[keep])
    if given is not None:
        backbone_any.embeddings = _Given(given)
    try:
        yield
    finally:
        encoder.layer = layers
        backbone_any.embeddings = embeddings


def row_key(ids: torch.Tensor, types: torch.Tensor | None) -> Key:
    """What identifies a row's lower states: its token ids (and token types, if any)."""
    key = tuple(int(i) for i in ids)
    return key if types is None else key + tuple(int(t) for t in types)


@dataclass
class LowerCache:
    """Hidden states after layer `start - 1`, one [tokens, hidden] tensor per distinct row."""

    start: int
    states: dict[Key, torch.Tensor]

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() * t.element_size() for t in self.states.values())

    def batch_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[rows, width, hidden] for the batch, zeros at padding; None when a row is missing."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids")
        found = []
        for n in range(ids.shape[0]):
            length = int(mask[n].sum())
            row_types = None if types is None else types[n, :length]
            state = self.states.get(row_key(ids[n, :length], row_types))
            if state is None:
                return None
            found.append(state)
        hidden = found[0].new_zeros((ids.shape[0], ids.shape[1], found[0].shape[-1]))
        for n, state in enumerate(found):
            hidden[n, : state.shape[0]] = state
        return hidden


def build_cache(
    backbone: nn.Module,
    examples: list[Example],
    *,
    start: int,
    collate: Callable[[list[Example]], dict[str, torch.Tensor]],
    max_bytes: int,
    tick: Callable[[], None],
) -> LowerCache | None:
    """The states of `examples` below layer `start`, or None when they would pass `max_bytes`
    (or the backbone is not BERT-like, or `start` is 0: nothing to skip)."""
    stack = stack_of(backbone)
    if start <= 0 or stack is None or start >= len(stack[1]) or not examples:
        return None
    config: Any = getattr(backbone, "config")  # noqa: B009 (a Module attribute, typed Any)
    hidden_size = int(config.hidden_size)
    tokens = sum(len(e.input_ids) for e in examples)
    if tokens * hidden_size * 4 > max_bytes:
        return None
    states: dict[Key, torch.Tensor] = {}
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), _layers_only(backbone, slice(0, start), None):
            order = batch_order(examples, batch_size=64, shuffle=False, seed=0, by_length=True)
            for chunk in order:
                tick()
                batch = collate([examples[i] for i in chunk])
                out = backbone(**{k: v for k, v in batch.items() if k != "labels"})
                _store(states, batch, out.last_hidden_state)
    finally:
        backbone.train(was_training)
    return LowerCache(start=start, states=states)


def _store(
    states: dict[Key, torch.Tensor], batch: dict[str, torch.Tensor], hidden: torch.Tensor
) -> None:
    types = batch.get("token_type_ids")
    for n in range(hidden.shape[0]):
        length = int(batch["attention_mask"][n].sum())
        row_types = None if types is None else types[n, :length]
        states[row_key(batch["input_ids"][n, :length], row_types)] = hidden[n, :length].clone()


@contextmanager
def skipping_lower(backbone: nn.Module, cache: LowerCache) -> Iterator[None]:
    """For the block, every forward of `backbone` whose rows are all stored starts at the
    cache's layer from the stored states."""
    active: list[Any] = []

    def before(_module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        batch = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        if args and isinstance(args[0], torch.Tensor):  # transformers passes input_ids first
            batch["input_ids"] = args[0]
        given = cache.batch_states(batch) if "input_ids" in batch else None
        if given is not None:
            swap = _layers_only(backbone, slice(cache.start, None), given)
            swap.__enter__()
            active.append(swap)

    def after(_module: nn.Module, _args: Any, _kwargs: Any, _output: Any) -> None:
        while active:
            active.pop().__exit__(None, None, None)

    handles = [
        backbone.register_forward_pre_hook(before, with_kwargs=True),
        backbone.register_forward_hook(after, with_kwargs=True, always_call=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def lower_layers_skipped(
    backbone: nn.Module | None,
    examples: list[Example],
    *,
    targets: Sequence[str] | None,
    collate: Callable[[list[Example]], dict[str, torch.Tensor]],
    max_bytes: int,
    tick: Callable[[], None],
    say: Callable[[str], None],
) -> AbstractContextManager[None]:
    """Where `targets` leave the lower layers of `backbone` frozen, their states for `examples`
    computed now and reused for the block; else nothing changes."""
    start = first_adapted_layer(targets)
    if backbone is None or start == 0:
        return nullcontext()
    cache = build_cache(
        backbone, examples, start=start, collate=collate, max_bytes=max_bytes, tick=tick
    )
    if cache is None:
        say(
            f"layers below {start} are computed at every step: their states for "
            f"{len(examples)} rows would pass the cache limit of {max_bytes // 2**20} MiB"
        )
        return nullcontext()
    say(
        f"layers below {start} computed once for {len(cache.states)} distinct rows "
        f"({cache.nbytes / 2**20:.1f} MiB) and reused at every step"
    )
    return skipping_lower(backbone, cache)
