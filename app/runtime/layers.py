"""Multi-adapter layers: each target linear layer of the base is wrapped once, for good.

A wrapped layer holds stacked per-slot LoRA weights and IA3 scaling vectors. A batch carries a
slot index per row (set on the shared `BatchContext` by the engine), and the layer applies each
row's own delta or scales with gathered, batched products, so rows of different adapters,
methods, ranks and target modules run in one forward. Slot 0 is the empty adapter: rows without
one get exactly the base output. Loading an adapter is a copy into a slot, never a module
injection. The `LayerSet` also owns the per-slot virtual tokens of prompt and prefix adapters
and patches the base's self-attention once so that prefixes can be routed per row.
"""

from __future__ import annotations

import torch
from torch import nn

from app.errors import bad_request
from app.registry.weights import AdapterWeights
from app.runtime.batch_context import BatchContext
from app.runtime.lora_products import (
    RowGather,
    add_gathered,
    add_row_gathered,
    add_segments,
    add_stacked,
    choose,
)
from app.runtime.prefix_attention import (
    PrefixBatch,
    PrefixRouter,
    attention_geometry,
    patch_self_attention,
    prefix_grid,
)
from app.runtime.prompts import VirtualTable


class MultiLoraLinear(nn.Module):
    """A frozen `nn.Linear` plus per-slot LoRA deltas `B_s @ A_s` (scale folded into B) and
    per-slot IA3 scales (input-side for feed-forward modules, output-side otherwise)."""

    def __init__(self, base_layer: nn.Linear, ctx: BatchContext) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ctx = ctx
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        device, dtype = base_layer.weight.device, base_layer.weight.dtype
        # Capacity grows on demand (see `grow`), so an idle service holds almost nothing.
        self.lora_a = torch.zeros(1, 0, self.in_features, device=device, dtype=dtype)
        # B is stored transposed, [slots, rank, out], so the batched product reads it
        # contiguously; `lora_b` is the [slots, out, rank] view that PEFT's layout suggests.
        self.lora_bt = torch.zeros(1, 0, self.out_features, device=device, dtype=dtype)
        self.ranks: list[int] = [0]  # rank of each slot in THIS layer (0: not targeted)
        # IA3 tables [slots, features] of ones, allocated at the first IA3 adapter that targets
        # this layer: a LoRA-only service never holds them.
        self.ia3_in: torch.Tensor | None = None
        self.ia3_out: torch.Tensor | None = None
        self.ia3_slots: set[int] = set()

    @property
    def lora_b(self) -> torch.Tensor:
        """[slots, out, rank] view of the stored B (scale folded in)."""
        return self.lora_bt.transpose(1, 2)

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
        bt = self.lora_bt.new_zeros(slots, rank, self.out_features)
        a[:old_slots, :old_rank] = self.lora_a
        bt[:old_slots, :old_rank] = self.lora_bt
        self.lora_a, self.lora_bt = a, bt
        self.ranks += [0] * (slots - len(self.ranks))
        self.ia3_in = _grow_ones(self.ia3_in, slots)
        self.ia3_out = _grow_ones(self.ia3_out, slots)

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
        if old > rank:  # only the tail a smaller adapter leaves behind needs clearing
            self.lora_a[slot, rank:old].zero_()
            self.lora_b[slot, :, rank:old].zero_()
        self.lora_a[slot, :rank].copy_(a)
        self.lora_b[slot, :, :rank].copy_(b)
        self.ranks[slot] = rank

    def assign_ia3(self, slot: int, vector: torch.Tensor | None, *, input_side: bool) -> None:
        """Copy one adapter's IA3 vector into a slot, or reset the slot's scales to one."""
        for table in (self.ia3_in, self.ia3_out):
            if table is not None:
                table[slot].fill_(1.0)
        self.ia3_slots.discard(slot)
        if vector is None:
            return
        slots = self.lora_a.shape[0]
        ref = self.base_layer.weight
        if input_side:
            if self.ia3_in is None:
                self.ia3_in = ref.new_ones(slots, self.in_features)
            self.ia3_in[slot].copy_(vector)
        else:
            if self.ia3_out is None:
                self.ia3_out = ref.new_ones(slots, self.out_features)
            self.ia3_out[slot].copy_(vector)
        self.ia3_slots.add(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        if (
            ctx.per_token
            and ctx.slot_ids is not None
            and x.numel() != ctx.slot_ids.numel() * x.shape[-1]
        ):
            # A packed forward's pooler reads one token per bin, not per row; the engine
            # discards that output and pools each row again under row routing.
            return self.base_layer(x)
        if ctx.ia3_slots and not self.ia3_slots.isdisjoint(ctx.ia3_slots):
            out = self._scaled(x)
        else:
            out = self.base_layer(x)
        if ctx.slot_ids is None:
            return out
        rank = max((self.ranks[s] for s in ctx.active_slots), default=0)
        if rank == 0:
            return out
        if ctx.uniform_slot is not None:
            # Two ops, the second fused into the base output in place (this call's fresh
            # result): on CPU each op's fixed cost is what a LoRA adds to a small batch.
            a = self.lora_a[ctx.uniform_slot, :rank]
            bt = self.lora_bt[ctx.uniform_slot, :rank]
            hidden = x.reshape(-1, self.in_features) @ a.t()
            out.view(-1, self.out_features).addmm_(hidden, bt)
        elif ctx.per_token:
            self._add_packed(out, x, rank=rank)
        else:
            self._add_mixed(out, x, rank=rank)
        return out

    def _add_packed(self, out: torch.Tensor, x: torch.Tensor, *, rank: int) -> None:
        """A packed batch's deltas, row by row at the places the engine's `RowGather` names
        (a packed batch of one slot takes the uniform path instead)."""
        rows = self.ctx.rows
        assert rows is not None, "a packed batch of several slots is routed with its rows"
        add_row_gathered(
            out.view(-1, self.out_features),
            x.reshape(-1, self.in_features),
            lora_a=self.lora_a,
            lora_bt=self.lora_bt,
            rows=rows,
            rank=rank,
        )

    def _add_mixed(self, out: torch.Tensor, x: torch.Tensor, *, rank: int) -> None:
        """Each row's own delta, added in place to `out` (this call's fresh result); the form is
        picked per call (app/runtime/lora_products.py), copy-free unless gather is cheaper."""
        plan = self.ctx.plan()
        capacity = self.lora_a.shape[1]
        form = self.ctx.form or choose(
            device_type=x.device.type,
            tokens=x.numel() // self.in_features,
            rows=len(plan.slots),
            rank=rank,
            segments=len(plan.segments),
            span_rank=plan.span * capacity,
            in_features=self.in_features,
            out_features=self.out_features,
        )
        tables = {"lora_a": self.lora_a, "lora_bt": self.lora_bt}
        if form == "stacked":
            add_stacked(out, x, **tables, lo=plan.lo, mask=self.ctx.mask(capacity, x))
        elif form == "gather":
            add_gathered(out, x, **tables, slot_ids=plan.ids, rank=rank)
        else:
            add_segments(out, x.contiguous(), **tables, segments=plan.segments, ranks=self.ranks)

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        """PEFT's IA3: `base(x * l)` for feed-forward modules, `base(x) * l` for the others.

        Rows of other slots gather a scale of exactly one, so they are unchanged.
        """
        ctx = self.ctx
        if ctx.uniform_slot is not None:
            index: int | torch.Tensor = ctx.uniform_slot
            shape: tuple[int, ...] = (-1,)
        else:
            index = ctx.slot_ids  # type: ignore[assignment]
            rows = tuple(x.shape[:-1]) if ctx.per_token else (x.shape[0],) + (1,) * (x.dim() - 2)
            shape = (*rows, -1)
        if self.ia3_in is not None:
            x = x * self.ia3_in[index].view(shape)
        out: torch.Tensor = self.base_layer(x)
        if self.ia3_out is not None:
            out = out * self.ia3_out[index].view(shape)
        return out


def _grow_ones(table: torch.Tensor | None, slots: int) -> torch.Tensor | None:
    """An IA3 table with `slots` rows, new rows set to one (no scaling)."""
    if table is None or table.shape[0] >= slots:
        return table
    grown = table.new_ones(slots, table.shape[1])
    grown[: table.shape[0]] = table
    return grown


class LayerSet:
    """Every wrapped layer of the base, addressed by module path, plus their shared context,
    the per-slot virtual-token tables and the prefix router of the patched self-attention."""

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
        self._ia3_slots: set[int] = set()
        ref = next(model.parameters())
        embed = getattr(model, "get_input_embeddings", lambda: None)()
        hidden = int(getattr(embed, "embedding_dim", 0) or 0)
        self.prompts = VirtualTable((hidden,), device=ref.device, dtype=ref.dtype)
        self.prefix_router = PrefixRouter()
        self.prefixes: VirtualTable | None = None
        if patch_self_attention(model, self.prefix_router):
            layers, heads, dim = attention_geometry(model)
            self.prefixes = VirtualTable(
                (layers, 2, heads, dim), device=ref.device, dtype=ref.dtype
            )

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

    def extract_lora(self, slot: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Copies of a slot's LoRA pairs (scale folded into B), as `AdapterWeights.lora` holds."""
        out = {}
        for path, layer in self.layers.items():
            rank = layer.ranks[slot]
            if rank:
                out[path] = (
                    layer.lora_a[slot, :rank].clone(),
                    layer.lora_b[slot, :, :rank].clone(),
                )
        return out

    def load(self, slot: int, weights: AdapterWeights) -> None:
        """Copy every per-slot part of an adapter (LoRA, IA3, prompt, prefix) into `slot`."""
        if weights.prefix and self.prefixes is None:
            raise bad_request(
                "unsupported_method",
                "prefix adapters need an encoder base with BERT-style attention",
                param="method",
            )
        unknown = set(weights.ia3) - set(self.layers)
        if unknown:
            raise KeyError(f"modules {sorted(unknown)[:3]} are not wrapped by the runtime")
        self.assign(slot, weights.lora)
        self._assign_ia3(slot, weights)
        prompt = weights.prompt
        self.prompts.assign(slot, prompt.to(self.prompts.data) if prompt is not None else None)
        if self.prefixes is not None:
            grid = prefix_grid(weights.prefix).to(self.prefixes.data) if weights.prefix else None
            self.prefixes.assign(slot, grid)

    def clear(self, slot: int) -> None:
        """Empty `slot` in every layer and table."""
        self.load(slot, AdapterWeights(method="", task="", labels=[]))

    def _assign_ia3(self, slot: int, weights: AdapterWeights) -> None:
        if slot not in self._ia3_slots and not weights.ia3:
            return  # the common LoRA case: nothing to reset, skip the loop over layers
        for path, layer in self.layers.items():
            vector = weights.ia3.get(path)
            layer.assign_ia3(slot, vector, input_side=path in weights.ia3_input_side)
        if weights.ia3:
            self._ia3_slots.add(slot)
        else:
            self._ia3_slots.discard(slot)

    def route(
        self,
        slot_ids: list[int],
        device: torch.device,
        *,
        per_token: bool = False,
        rows: RowGather | None = None,
    ) -> None:
        """Point every layer at this batch's rows (or, packed, at each token's slot)."""
        unique = set(slot_ids)
        self.ctx.per_token = per_token
        self.ctx.rows = rows
        self.ctx.slot_ids = torch.tensor(slot_ids, dtype=torch.long, device=device)
        self.ctx.uniform_slot = slot_ids[0] if len(unique) == 1 else None
        self.ctx.active_slots = frozenset(unique - {0})
        self.ctx.ia3_slots = frozenset(self.ctx.active_slots & self._ia3_slots)

    def route_prefix(self, batch: PrefixBatch | None) -> None:
        """Give the patched self-attentions this batch's prefixes (None: no prefix rows)."""
        self.prefix_router.batch = batch

    def clear_route(self) -> None:
        self.ctx.slot_ids = None
        self.ctx.per_token = False
        self.ctx.rows = None
        self.ctx.uniform_slot = None
        self.ctx.active_slots = frozenset()
        self.ctx.ia3_slots = frozenset()
        self.prefix_router.batch = None


def needs_slot(weights: AdapterWeights) -> bool:
    """Adapters that change the base forward take a slot; head-only ones (probes) do not."""
    return bool(weights.lora or weights.ia3 or weights.prompt is not None or weights.prefix)
