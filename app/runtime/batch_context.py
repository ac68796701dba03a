"""The per-forward routing every wrapped layer reads (`app/runtime/layers.py`): which slot each
row (or, in a packed batch, each token) uses, and what the products derive from it once per
batch instead of once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.runtime.lora_products import Form, RowGather, Segment, run_segments, stacked_mask


@dataclass
class RowPlan:
    """One batch's routing in the forms the products need."""

    ids: torch.Tensor
    slots: list[int]
    segments: tuple[Segment, ...]
    lo: int  # lowest active slot
    span: int  # active slots lie in [lo, lo + span)


@dataclass
class BatchContext:
    """Per-forward routing shared by every wrapped layer; the engine sets it per batch.

    Only one forward runs over the serving layers at a time (the engine holds a lock), so a
    plain shared object is safe and no global `set_adapter` state exists.
    """

    slot_ids: torch.Tensor | None = None  # [batch] long, on the device
    uniform_slot: int | None = None  # set when every row uses the same slot
    active_slots: frozenset[int] = field(default_factory=frozenset)
    # Active slots that hold IA3 vectors somewhere: empty keeps LoRA-only batches on the fast path.
    ia3_slots: frozenset[int] = field(default_factory=frozenset)
    # None: each layer picks its copy-free form by shape; benches and tests may force one.
    form: Form | None = None
    # slot_ids name a slot per token (a packed batch, app/runtime/packing.py), not per row;
    # `rows` then says where each row's tokens are, for the row-gathered LoRA products.
    per_token: bool = False
    rows: RowGather | None = None
    # Derived from slot_ids once per batch (not per layer): see `plan`.
    _plan: RowPlan | None = None
    _masks: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = field(default_factory=dict)

    def plan(self) -> RowPlan:
        """Runs of equal slots and the slot range of this batch, computed once per batch."""
        ids = self.slot_ids
        assert ids is not None
        if self._plan is None or self._plan.ids is not ids:
            slots = [int(s) for s in ids.tolist()]
            active = [s for s in slots if s]
            lo = min(active, default=0)
            span = max(active, default=0) - lo + 1
            self._plan = RowPlan(ids, slots, run_segments(slots), lo, span)
            self._masks = {}
        return self._plan

    def mask(self, rank: int, like: torch.Tensor) -> torch.Tensor:
        """The stacked form's row mask for rank capacity `rank`, shared by every layer."""
        plan = self.plan()
        key = (rank, like.dtype, like.device)
        if key not in self._masks:
            self._masks[key] = stacked_mask(
                plan.slots, lo=plan.lo, span=plan.span, rank=rank, like=like
            )
        return self._masks[key]
