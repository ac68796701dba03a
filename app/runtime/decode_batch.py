"""The tensors of a batch being decoded: KV cache, attention mask and each row's last token.

Rows are left-aligned to a common cache length: whatever a row lacks (a shorter prompt, no
prefix adapter, a later start) is masked padding on its left. Every real token's position is
the number of real tokens before it, so a row computes exactly what it would alone, and rows
can be dropped (finished) or merged in (newly admitted) between decode steps.

A prefix adapter's virtual key/values are simply the first real entries of its row's cache;
rows without one get masked zeros there (DESIGN.md decision 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# A prefix adapter on the device: [layers, 2 (key, value), kv_heads, virtual tokens, head_dim].
Prefix = torch.Tensor


class KVBatch:
    """Decode state of rows that share one forward; the cache always matches `mask`."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask  # [rows, cached tokens], 1 for real tokens
        self.last = last  # [rows] the token each row feeds next (not yet in the cache)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention mask, position ids) of the next one-token step."""
        positions = self.mask.sum(dim=-1, keepdim=True)
        mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=-1)
        return self.last[:, None], mask, positions

    def commit(self, mask: torch.Tensor, last: list[int]) -> None:
        """After a forward: the cache grew by the step's tokens; rows feed `last` next."""
        self.mask = mask
        self.last = torch.tensor(last, dtype=torch.long, device=mask.device)

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (finished rows stop costing), then drop all-padding columns."""
        if len(keep) == self.rows:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.last = self.last.index_select(0, index)
        self._trim()

    def merge(self, other: KVBatch) -> None:
        """Append `other`'s rows; the shorter side is left-padded with masked zeros."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat(
                [_left_pad(mine.values, length), _left_pad(theirs.values, length)]
            )
        self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(other.mask, length)])
        self.last = torch.cat([self.last, other.last])

    def _trim(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.mask.shape[1]
        if first == 0:
            return
        for layer in _layers(self.cache):
            layer.keys = layer.keys[:, :, first:]
            layer.values = layer.values[:, :, first:]
        self.mask = self.mask[:, first:]


def prefill_inputs(
    prompts: list[list[int]],
    prefixes: list[Prefix | None],
    *,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache]:
    """Left-padded prompts over a cache that holds each row's prefix (or masked zeros).

    Returns input_ids [rows, L], the attention mask [rows, P + L], position ids [rows, L]
    and the cache of length P, the longest prefix.
    """
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((rows, width), dtype=torch.long)
    for n, prompt in enumerate(prompts):
        ids[n, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[n, width - len(prompt) :] = 1
    cache, prefix_mask = _prefix_cache(prefixes, device=device, dtype=dtype)
    mask = torch.cat([prefix_mask, prompt_mask.to(device)], dim=-1)
    # A token's position counts the real tokens before it: the prefix, then its own prompt,
    # which is what PEFT gives an unpadded row (positions P .. P + L - 1).
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -width:]
    return ids.to(device), mask, positions, cache


def _prefix_cache(
    prefixes: list[Prefix | None], *, device: torch.device, dtype: torch.dtype
) -> tuple[DynamicCache, torch.Tensor]:
    rows = len(prefixes)
    present = [p for p in prefixes if p is not None]
    longest = max((int(p.shape[3]) for p in present), default=0)
    mask = torch.zeros((rows, longest), dtype=torch.long, device=device)
    if not present:
        return DynamicCache(), mask
    layers, _two, heads, _virtual, head_dim = present[0].shape
    grid = torch.zeros((layers, 2, rows, heads, longest, head_dim), dtype=dtype, device=device)
    for n, prefix in enumerate(prefixes):
        if prefix is not None:
            virtual = int(prefix.shape[3])
            grid[:, :, n, :, longest - virtual :] = prefix
            mask[n, longest - virtual :] = 1
    data = [(grid[i, 0], grid[i, 1]) for i in range(int(layers))]
    return DynamicCache(ddp_cache_data=data), mask


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer tensors, which rows are selected and merged on directly."""
    layers = list(cache.layers)
    for layer in layers:
        # Sliding-window or linear-attention layers keep other state than plain key/values.
        if type(layer) is not DynamicLayer:
            raise TypeError(f"continuous batching needs full-attention layers, got {layer!r}")
    return layers


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad the sequence axis (-2 for key/values [b, h, t, d], -1 for masks [b, t]) on the left."""
    if tensor.dim() == 2:
        return F.pad(tensor, (length - tensor.shape[1], 0))
    return F.pad(tensor, (0, 0, length - tensor.shape[2], 0))
