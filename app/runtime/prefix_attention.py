"""Prefix tuning on an encoder: self-attention that also attends to per-row key/value prefixes.

transformers 5's BERT self-attention no longer takes `past_key_values`, and PEFT refuses prefix
tuning on it, so the self-attention modules are patched once, in place (their class is swapped
for a subclass: module paths, parameters and `isinstance` checks stay as they were). A patched
module runs its original forward untouched unless a `PrefixBatch` is routed; then each row's
learned keys/values are put in front of its own, padded to the batch's longest prefix and
masked, so rows of different prefix adapters, and rows without one, share the forward.

The same patch serves (prefixes gathered from per-slot tables) and trains (a prefix parameter
broadcast over the batch), so an adapter is trained under exactly the arithmetic it is served
with. Positions follow PEFT's rule for prefix tuning: a row's tokens start at position
`num_virtual_tokens` (the prefix occupies the cache positions in front of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PrefixBatch:
    """One forward's prefixes: `kv(layer)` gives (key, value) [batch, heads, prefix, head_dim]."""

    kv: Callable[[int], KV]
    mask: torch.Tensor  # additive [batch, 1, 1, prefix + tokens]: 0 to attend, min to skip


class PrefixRouter:
    """What the patched attentions read; `batch` is None outside prefix forwards."""

    def __init__(self) -> None:
        self.batch: PrefixBatch | None = None


def additive_mask(
    prefix_valid: torch.Tensor, token_mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """[batch, 1, 1, prefix + tokens] from [batch, prefix] and [batch, tokens] 0/1 masks."""
    keep = torch.cat([prefix_valid.bool(), token_mask.bool()], dim=1)
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    low = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=keep.device)
    return torch.where(keep, zero, low)[:, None, None, :]


class _PrefixSelfAttention(nn.Module):
    """Mixed into the base's self-attention class; see `patch_self_attention`."""

    prefix_router: PrefixRouter
    prefix_layer: int

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        batch = self.prefix_router.batch
        if batch is None:
            # Batches without prefix rows run the original code: bit-identical to the base.
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        return prefix_attention(self, hidden_states, batch)


def prefix_attention(module: Any, hidden: torch.Tensor, batch: PrefixBatch) -> KV:
    """Self-attention over [prefix; tokens] keys/values; returns (output, no weights)."""
    rows, tokens = hidden.shape[:2]
    size = int(module.attention_head_size)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(rows, tokens, -1, size).transpose(1, 2)

    query = heads(module.query(hidden))
    prefix_key, prefix_value = batch.kv(int(module.prefix_layer))
    key = torch.cat([prefix_key.to(query.dtype), heads(module.key(hidden))], dim=2)
    value = torch.cat([prefix_value.to(query.dtype), heads(module.value(hidden))], dim=2)
    dropout = float(module.dropout.p) if module.training else 0.0
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=batch.mask.to(query.dtype),
        dropout_p=dropout,
        scale=float(getattr(module, "scaling", size**-0.5)),
    )
    return out.transpose(1, 2).reshape(rows, tokens, -1), None  # type: ignore[return-value]


_PATCHED: dict[type, type] = {}


def self_attentions(model: nn.Module) -> list[nn.Module]:
    """The encoder's self-attention modules (BERT layout: query, key, value, head size)."""
    found = []
    for name, module in model.named_modules():
        if "cross" in type(module).__name__.lower() or "crossattention" in name:
            continue
        if all(
            isinstance(getattr(module, a, None), nn.Module) for a in ("query", "key", "value")
        ) and hasattr(module, "attention_head_size"):
            found.append(module)
    return found


def patch_self_attention(model: nn.Module, router: PrefixRouter) -> int:
    """Swap every self-attention module's class for its prefix-aware subclass, once.

    Returns how many were patched (0: this base's attention has another layout, so prefix
    adapters cannot be served or trained on it). Patching again only re-points the router.
    """
    modules: list[Any] = self_attentions(model)
    for index, module in enumerate(modules):
        cls = type(module)
        if not issubclass(cls, _PrefixSelfAttention):
            patched = _PATCHED.get(cls)
            if patched is None:
                patched = type(f"Prefix{cls.__name__}", (_PrefixSelfAttention, cls), {})
                _PATCHED[cls] = patched
            module.__class__ = patched
        layer = getattr(module, "layer_idx", None)
        module.prefix_layer = index if layer is None else int(layer)
        module.prefix_router = router
    return len(modules)


def attention_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(layers, heads, head_dim) of the self-attentions; (0, 0, 0) when there are none."""
    modules: list[Any] = self_attentions(model)
    if not modules:
        return 0, 0, 0
    first = modules[0]
    return len(modules), int(first.num_attention_heads), int(first.attention_head_size)


def prefix_grid(prefix: list[KV]) -> torch.Tensor:
    """PEFT's per-layer (key, value) [heads, virtual, dim] -> [virtual, layers, 2, heads, dim]."""
    stacked = torch.stack([torch.stack([key, value]) for key, value in prefix])
    return stacked.permute(3, 0, 1, 2, 4).contiguous()


def layer_kv(part: torch.Tensor) -> KV:
    """(key, value) [batch, heads, virtual, dim] of one layer's [batch, virtual, 2, heads, dim]."""
    return part[:, :, 0].transpose(1, 2), part[:, :, 1].transpose(1, 2)
