"""Multi-adapter layers: each target linear layer of the base is wrapped once, for good.

A wrapped layer holds stacked per-slot LoRA weights. A batch carries a slot index per row
(set on the shared `BatchContext` by the engine), and the layer adds each row's own delta
with gathered, batched matrix products, so rows of different adapters, ranks and target
modules run in one forward. Slot 0 is the empty adapter: rows without one get exactly the
base output. Loading an adapter is a copy into a slot, never a module injection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BatchContext:
    """Per-forward routing shared by every wrapped layer; the engine sets it per batch.

    Only one forward runs over the serving layers at a time (the engine holds a lock), so a
    plain shared object is safe and no global `set_adapter` state exists.
    """

    slot_ids: torch.Tensor | None = None  # [batch] long, on the device
    uniform_slot: int | None = None  # set when every row uses the same slot
    active_slots: frozenset[int] = field(default_factory=frozenset)


class MultiLoraLinear(nn.Module):
    """A frozen `nn.Linear` plus per-slot LoRA deltas `B_s @ A_s` (scale folded into B)."""

    def __init__(self, base_layer: nn.Linear, ctx: BatchContext) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ctx = ctx
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        device, dtype = base_layer.weight.device, base_layer.weight.dtype
        # Capacity grows on demand (see `grow`), so an idle service holds almost nothing.
        self.lora_a = torch.zeros(1, 0, self.in_features, device=device, dtype=dtype)
        self.lora_b = torch.zeros(1, self.out_features, 0, device=device, dtype=dtype)
        self.ranks: list[int] = [0]  # rank of each slot in THIS layer (0: not targeted)

    @property
    def weight(self) -> torch.Tensor:
        # Code that inspects `layer.weight` (tied weights, dtype probes) keeps working.
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def grow(self, slots: int, rank: int) -> None:
        """Reallocate to hold `slots` slots of rank `rank`, keeping what is loaded."""
        old_slots, old_rank = self.lora_a.shape[0], self.lora_a.shape[1]
        if slots <= old_slots and rank <= old_rank:
            return
        slots, rank = max(slots, old_slots), max(rank, old_rank)
        a = self.lora_a.new_zeros(slots, rank, self.in_features)
        b = self.lora_b.new_zeros(slots, self.out_features, rank)
        a[:old_slots, :old_rank] = self.lora_a
        b[:old_slots, :, :old_rank] = self.lora_b
        self.lora_a, self.lora_b = a, b
        self.ranks += [0] * (slots - len(self.ranks))

    def assign(self, slot: int, pair: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Copy one adapter's (A, B) into a slot, or clear the slot for this layer."""
        old = self.ranks[slot]
        if pair is None:
            if old:
                self.lora_a[slot, :old].zero_()
                self.lora_b[slot, :, :old].zero_()
            self.ranks[slot] = 0
            return
        a, b = pair
        rank = a.shape[0]
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.lora_a[slot, :rank].copy_(a)
        self.lora_b[slot, :, :rank].copy_(b)
        self.ranks[slot] = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        ctx = self.ctx
        if ctx.slot_ids is None:
            return out
        rank = max((self.ranks[s] for s in ctx.active_slots), default=0)
        if rank == 0:
            return out
        if ctx.uniform_slot is not None:
            a = self.lora_a[ctx.uniform_slot, :rank]
            b = self.lora_b[ctx.uniform_slot, :, :rank]
            return out + (x @ a.t()) @ b.t()
        a = self.lora_a[ctx.slot_ids, :rank]  # [batch, r, in]
        b = self.lora_b[ctx.slot_ids, :, :rank]  # [batch, out, r]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        return out + delta.reshape(out.shape)


class LayerSet:
    """Every wrapped layer of the base, addressed by module path, plus their shared context."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.ctx = BatchContext()
        self.layers: dict[str, MultiLoraLinear] = {}
        for path in paths:
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            layer = getattr(parent, attr)
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"{path} is {type(layer).__name__}, not nn.Linear")
            wrapped = MultiLoraLinear(layer, self.ctx)
            setattr(parent, attr, wrapped)
            self.layers[path] = wrapped
        self.slot_capacity = 1
        self.rank_capacity = 0

    def ensure(self, slots: int, rank: int) -> None:
        """Grow every layer so that `slots` slots of rank `rank` fit."""
        if slots <= self.slot_capacity and rank <= self.rank_capacity:
            return
        new_slots = max(slots, self.slot_capacity)
        new_rank = max(rank, self.rank_capacity)
        for layer in self.layers.values():
            layer.grow(new_slots, new_rank)
        self.slot_capacity, self.rank_capacity = new_slots, new_rank

    def assign(self, slot: int, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy an adapter into `slot` across all layers; layers it does not target get zeros."""
        unknown = set(lora) - set(self.layers)
        if unknown:
            raise KeyError(f"modules {sorted(unknown)[:3]} are not wrapped by the runtime")
        for path, layer in self.layers.items():
            pair = lora.get(path)
            if pair is not None:
                pair = (pair[0].to(layer.lora_a), pair[1].to(layer.lora_b))
            layer.assign(slot, pair)

    def route(self, slot_ids: list[int], device: torch.device) -> None:
        """Point every layer at this batch's rows."""
        unique = set(slot_ids)
        self.ctx.slot_ids = torch.tensor(slot_ids, dtype=torch.long, device=device)
        self.ctx.uniform_slot = slot_ids[0] if len(unique) == 1 else None
        self.ctx.active_slots = frozenset(unique - {0})

    def clear_route(self) -> None:
        self.ctx.slot_ids = None
        self.ctx.uniform_slot = None
        self.ctx.active_slots = frozenset()

    @property
    def allocated_bytes(self) -> int:
        return sum(
            layer.lora_a.numel() * layer.lora_a.element_size()
            + layer.lora_b.numel() * layer.lora_b.element_size()
            for layer in self.layers.values()
        )
