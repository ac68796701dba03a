"""Copy-free LoRA products for a batch whose rows use different adapters.

Both forms read the per-slot tables (`lora_a` [slots, rank, in], `lora_bt` [slots, rank, out])
in place; neither gathers a per-row copy of A and B (which cost a full read and write of every
row's adapter per layer, 86 MB per MiniLM forward at 64 adapters):

- segments (SGMV-style): rows are grouped in runs of the same slot (the engine orders rows by
  slot), and each run costs two matrix products on views of its slot's A and B. Its overhead is
  a fixed launch cost per run, so it suits many tokens per adapter (encoder batches, prefill).
- stacked: one product of every token against the A's of the slot range the batch spans,
  stacked as [span * rank, in] (a view, no copy), a 0/1 mask that keeps each row's own rank
  columns, and one product against the B's stacked as [span * rank, out]. Its cost is extra
  arithmetic (span * rank columns per token) and only three launches per layer, so it suits few
  tokens per row (decode steps) and devices where a launch costs more than arithmetic (CUDA).

- gather (fallback, not copy-free): `index_select` each row's A and B into [rows, rank, in]
  and [rows, rank, out] copies, then two batched products. It stays because its cost is four
  ops per layer whatever the slot layout: with few rows on many distinct adapters (one-row
  HTTP requests on CPU) the copy is small, while segments pays two products per adapter and
  stacked pays span * rank columns per token.

`choose` picks per layer call from the shape with a cost model whose constants were measured
with bench/hetero_batch.py (see bench/README.md, issue 15).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Form = Literal["segments", "stacked", "gather"]


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of the batch all use `slot`."""

    slot: int
    start: int
    stop: int


@dataclass(frozen=True)
class CostModel:
    """Per device type: seconds per segment (launch and Python overhead of its two products),
    arithmetic rate, seconds per gathered row (its index_select copies of A and B, scaled by
    the rank x (in + out) elements copied per `gather_elems_per_s`) and the gather's fixed cost
    (its four ops). `choose` compares what differs between the forms."""

    launch_s: float
    flops_per_s: float
    gather_fixed_s: float
    gather_elems_per_s: float


# CPU: launch_s, flops_per_s and the copy rate from one wrapped 384-wide layer timed per form
# at 8-64 rows (bench/README.md, "gather form and same-sitting A/B"); gather_fixed_s from
# `python -m bench.http_mix --seconds 8 --clients 8` with gather forced (41 req/s mixed, as the
# old gather code, vs 25-28 with the layer-timed 350 us, which picked segments): in a serving
# process on a contended box each small op costs more than in isolation. CUDA: a kernel
# launch is ~10 us from Python while an H100 does ~50 TFLOP/s of fp32 via TF32 and copies at
# ~1 TB/s, so stacked nearly always wins there (no GPU here to measure; the choice logic itself
# is tested on CPU).
COSTS: dict[str, CostModel] = {
    "cpu": CostModel(
        launch_s=45e-6, flops_per_s=30e9, gather_fixed_s=60e-6, gather_elems_per_s=5e9
    ),
    "cuda": CostModel(
        launch_s=20e-6, flops_per_s=20e12, gather_fixed_s=40e-6, gather_elems_per_s=250e9
    ),
}


def run_segments(slot_ids: list[int]) -> tuple[Segment, ...]:
    """Maximal runs of consecutive rows with the same non-zero slot (slot 0: no adapter)."""
    out: list[Segment] = []
    start = 0
    for i in range(1, len(slot_ids) + 1):
        if i == len(slot_ids) or slot_ids[i] != slot_ids[start]:
            if slot_ids[start] != 0:
                out.append(Segment(slot_ids[start], start, i))
            start = i
    return tuple(out)


def choose(
    *,
    device_type: str,
    tokens: int,
    rows: int,
    rank: int,
    segments: int,
    span_rank: int,
    in_features: int,
    out_features: int,
) -> Form:
    """The cheapest form for this call by the device's cost model.

    `span_rank` is the stacked width (slot span x rank capacity) and `rank` the batch's largest
    rank in this layer (the gathered width); every form does the rows' own rank-r products, so
    only what differs is compared.
    """
    cost = COSTS.get(device_type, COSTS["cpu"])
    costs: dict[Form, float] = {
        "segments": segments * cost.launch_s,
        "stacked": 2.0 * tokens * span_rank * (in_features + out_features) / cost.flops_per_s,
        "gather": cost.gather_fixed_s
        + rows * rank * (in_features + out_features) / cost.gather_elems_per_s,
    }
    return min(costs, key=costs.__getitem__)


def add_segments(
    out: torch.Tensor,
    x: torch.Tensor,
    *,
    lora_a: torch.Tensor,
    lora_bt: torch.Tensor,
    segments: tuple[Segment, ...],
    ranks: list[int],
) -> None:
    """out[rows of s] += (x[rows of s] @ A_s^T) @ B_s^T for each segment, in place.

    `out` and `x` are batch-first ([rows, ..., features]); slices along rows of a contiguous
    tensor are contiguous, so every operand is a view.
    """
    in_f, out_f = x.shape[-1], out.shape[-1]
    for seg in segments:
        rank = ranks[seg.slot]
        if rank == 0:
            continue  # the adapter does not target this layer
        xs = x[seg.start : seg.stop].reshape(-1, in_f)
        hidden = xs @ lora_a[seg.slot, :rank].t()
        out[seg.start : seg.stop].view(-1, out_f).addmm_(hidden, lora_bt[seg.slot, :rank])


def add_stacked(
    out: torch.Tensor,
    x: torch.Tensor,
    *,
    lora_a: torch.Tensor,
    lora_bt: torch.Tensor,
    lo: int,
    mask: torch.Tensor,
) -> None:
    """out += ((x @ A_stack^T) * mask) @ Bt_stack over slots [lo, lo + span), in place.

    `mask` is [rows, span * rank_capacity]: 1 on the row's own slot's columns, 0 elsewhere.
    """
    span_rank = mask.shape[1]
    span = span_rank // lora_a.shape[1]
    a = lora_a[lo : lo + span].reshape(span_rank, -1)  # a view: whole slots are contiguous
    bt = lora_bt[lo : lo + span].reshape(span_rank, -1)
    rows = x.shape[0]
    hidden = x.reshape(rows, -1, x.shape[-1]) @ a.t()  # [rows, tokens, span * rank]
    hidden *= mask.unsqueeze(1)
    out.view(-1, out.shape[-1]).addmm_(hidden.view(-1, span_rank), bt)


def stacked_mask(
    slot_ids: list[int], *, lo: int, span: int, rank: int, like: torch.Tensor
) -> torch.Tensor:
    """[rows, span * rank] 0/1 mask selecting each row's slot block (rows of slot 0: none)."""
    mask = torch.zeros(len(slot_ids), span, rank, dtype=like.dtype)
    for row, slot in enumerate(slot_ids):
        if slot:
            mask[row, slot - lo] = 1.0
    return mask.view(len(slot_ids), span * rank).to(like.device)


def add_gathered(
    out: torch.Tensor,
    x: torch.Tensor,
    *,
    lora_a: torch.Tensor,
    lora_bt: torch.Tensor,
    slot_ids: torch.Tensor,
    rank: int,
) -> None:
    """out[row] += (x[row] @ A_slot^T) @ Bt_slot for every row, via gathered copies, in place.

    index_select is a block copy per row (advanced indexing `a[ids, :r]` goes element by
    element and cost more than the products); rows of slot 0 gather its zero tables.
    """
    a = lora_a[:, :rank].index_select(0, slot_ids)  # [rows, r, in]
    bt = lora_bt[:, :rank].index_select(0, slot_ids)  # [rows, r, out]
    hidden = _first_product(x.reshape(x.shape[0], -1, x.shape[-1]), a)
    out.view(out.shape[0], -1, out.shape[-1]).baddbmm_(hidden, bt)


@dataclass(frozen=True)
class RowGather:
    """A packed batch seen row by row: `index` [rows * longest] places each padded-layout
    position in the flattened bins, `keep` [rows * longest, 1] is 0 on padding, `slot_ids`
    [rows] is each row's slot (app/runtime/packing.py)."""

    index: torch.Tensor
    keep: torch.Tensor
    slot_ids: torch.Tensor
    longest: int


def add_row_gathered(
    out: torch.Tensor,
    x: torch.Tensor,
    *,
    lora_a: torch.Tensor,
    lora_bt: torch.Tensor,
    rows: RowGather,
    rank: int,
) -> None:
    """The gather form for a packed batch ([tokens, features] `out` and `x`): each row's
    tokens are gathered into a padded [rows, longest, in] copy (padding zeroed, so its delta is
    zero), multiplied by the row's gathered A and B, and added back at their packed places.

    Per token, a packed batch of many adapters would otherwise need a product pair per
    adapter (segments) or a copy of A and B per token; this costs seven ops whatever the
    number of adapters, on copies the size of the batch's activations.
    """
    count = rows.slot_ids.shape[0]
    padded = x.index_select(0, rows.index).mul_(rows.keep).view(count, rows.longest, -1)
    a = lora_a[:, :rank].index_select(0, rows.slot_ids)  # [rows, r, in]
    bt = lora_bt[:, :rank].index_select(0, rows.slot_ids)  # [rows, r, out]
    delta = torch.bmm(_first_product(padded, a), bt)
    out.index_add_(0, rows.index, delta.view(-1, out.shape[-1]))


def _first_product(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """[rows, tokens, r] = x @ A^T per row (x [rows, tokens, in], A [rows, r, in]).

    From 8 tokens a row it is taken as `(A @ x^T)^T`, a transposed view that the second product
    reads as it is: with rank-8 A's on 384- to 1536-wide layers and 18 tokens a row, torch's CPU
    bmm took 0.45-0.85x the time for the pair of products this way, and 0.77-1.09x for decode
    steps of one token (`python -m bench.first_product`).
    """
    if x.shape[1] >= 8:
        return torch.bmm(a, x.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(x, a.transpose(1, 2))
