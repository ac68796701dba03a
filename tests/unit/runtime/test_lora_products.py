"""LoRA products for mixed batches: every form (the copy-free two and the gather) equals the
per-row formula for any slot layout, and the cost model picks the form the measurements call
for on each device type."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from app.runtime.batch_context import BatchContext
from app.runtime.layers import MultiLoraLinear
from app.runtime.lora_products import RowGather, Segment, choose, run_segments


def _layer(ranks: list[int]) -> tuple[MultiLoraLinear, BatchContext, dict[int, tuple]]:
    torch.manual_seed(0)
    ctx = BatchContext()
    layer = MultiLoraLinear(nn.Linear(6, 5), ctx)
    layer.grow(len(ranks) + 1, max(ranks))
    pairs = {}
    for slot, rank in enumerate(ranks, start=1):
        if rank:
            pairs[slot] = (torch.randn(rank, 6), torch.randn(5, rank))
            layer.assign(slot, pairs[slot])
    return layer, ctx, pairs


def _expected(
    layer: MultiLoraLinear, x: torch.Tensor, slots: list[int], pairs: dict
) -> torch.Tensor:
    out = layer.base_layer(x)
    for row, slot in enumerate(slots):
        if slot in pairs:
            a, b = pairs[slot]
            out[row] += x[row] @ a.t() @ b.t()
    return out


@pytest.mark.parametrize("form", ["segments", "stacked", "gather", None])
@settings(max_examples=25, deadline=None)
@given(slots=st.lists(st.integers(0, 4), min_size=2, max_size=8), tokens=st.integers(1, 4))
def test_every_form_equals_the_per_row_formula(
    form: str | None, slots: list[int], tokens: int
) -> None:
    # slot 3 holds no adapter in this layer (rank 0): its rows get the base output
    layer, ctx, pairs = _layer([2, 4, 0, 3])
    x = torch.randn(len(slots), tokens, 6)
    ctx.slot_ids = torch.tensor(slots)
    ctx.uniform_slot = None
    ctx.active_slots = frozenset(s for s in slots if s)
    ctx.form = form  # type: ignore[assignment]
    with torch.inference_mode():
        got = layer(x)
    assert (got - _expected(layer, x, slots, pairs)).abs().max() < 1e-5


def test_the_products_copy_no_slot_table() -> None:
    """The forms read A and B as views: no allocation as large as the gathered tables."""
    layer, ctx, _ = _layer([4, 4, 4, 4])
    for form in ("segments", "stacked"):
        ctx.slot_ids, ctx.uniform_slot = torch.tensor([1, 2, 3, 4]), None
        ctx.active_slots, ctx.form = frozenset({1, 2, 3, 4}), form
        before = layer.lora_a.data_ptr(), layer.lora_bt.data_ptr()
        with torch.inference_mode():
            layer(torch.randn(4, 2, 6))
        assert (layer.lora_a.data_ptr(), layer.lora_bt.data_ptr()) == before


def test_runs_are_maximal_and_skip_the_empty_slot() -> None:
    assert run_segments([3, 3, 0, 0, 1, 3]) == (
        Segment(3, 0, 2),
        Segment(1, 4, 5),
        Segment(3, 5, 6),
    )
    assert run_segments([0, 0]) == ()
    assert run_segments([]) == ()


def _choice(device: str, features: int, **shape: int) -> str:
    return choose(device_type=device, in_features=features, out_features=features, **shape)


def test_cost_model_picks_segments_for_few_cpu_adapters_and_stacked_on_cuda() -> None:
    # MiniLM encoder batch: 64 rows x 18 tokens on 2 adapters (span 2, rank 8)
    encoder = {"tokens": 64 * 18, "rows": 64, "rank": 8, "segments": 2, "span_rank": 2 * 8}
    assert _choice("cpu", 384, **encoder) == "segments"
    # SmolLM decode step: 16 rows x 1 token on 16 adapters (span 16, rank 8)
    decode = {"tokens": 16, "rows": 16, "rank": 8, "segments": 16, "span_rank": 16 * 8}
    # on CPU few one-token rows gather (four small ops) rather than stack 16 x 8 columns
    assert _choice("cpu", 576, **decode) == "gather"
    # CUDA: launches dominate, stacked both times (the logic runs here, on CPU)
    assert _choice("cuda", 384, **encoder) == "stacked"
    assert _choice("cuda", 576, **decode) == "stacked"
    # one long segment: nothing to save by stacking or gathering
    one = {"tokens": 4096, "rows": 256, "rank": 8, "segments": 1, "span_rank": 8}
    assert _choice("cpu", 384, **one) == "segments"


def test_cost_model_gathers_cpu_rows_on_many_adapters() -> None:
    # one-row requests x 18 tokens on 16 adapters spread over 64 slots (http_mix's shape)
    many = {"tokens": 16 * 18, "rows": 16, "rank": 8, "segments": 16, "span_rank": 60 * 8}
    assert _choice("cpu", 384, **many) == "gather"
    # the hetero_batch shape: 64 rows on 64 adapters
    wide = {"tokens": 64 * 18, "rows": 64, "rank": 8, "segments": 64, "span_rank": 64 * 8}
    assert _choice("cpu", 384, **wide) == "gather"
    # the same rows on CUDA: one stacked product is cheaper than the copies
    assert _choice("cuda", 384, **many) == "stacked"
    # many rows on two adapters: two segments cost less than copying every row's A and B
    two = {"tokens": 64 * 18, "rows": 64, "rank": 8, "segments": 2, "span_rank": 60 * 8}
    assert _choice("cpu", 384, **two) == "segments"


def test_gather_leaves_the_slot_tables_unchanged() -> None:
    layer, ctx, _ = _layer([4, 4, 4, 4])
    tables = layer.lora_a.clone(), layer.lora_bt.clone()
    ctx.slot_ids, ctx.uniform_slot = torch.tensor([1, 2, 3, 4]), None
    ctx.active_slots, ctx.form = frozenset({1, 2, 3, 4}), "gather"
    with torch.inference_mode():
        layer(torch.randn(4, 2, 6))
    assert torch.equal(layer.lora_a, tables[0]) and torch.equal(layer.lora_bt, tables[1])


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), min_size=2, max_size=6),
)
def test_row_gathered_products_on_a_packed_batch_equal_the_per_row_formula(
    rows: list[tuple[int, int]],
) -> None:
    """Ragged rows laid end to end (a packed batch): each row's tokens get its own delta,
    padding positions gather zeros and add nothing."""
    layer, ctx, pairs = _layer([2, 4, 0, 3])
    slots, lengths = [s for s, _ in rows], [n for _, n in rows]
    longest, total = max(lengths), sum(lengths)
    x = torch.randn(total, 6)
    index = torch.zeros(len(rows), longest, dtype=torch.long)
    token_slots: list[int] = []
    start = 0
    for row, (slot, length) in enumerate(rows):
        index[row, :length] = torch.arange(start, start + length)
        index[row, length:] = start
        token_slots += [slot] * length
        start += length
    keep = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).reshape(-1, 1)
    ctx.slot_ids = torch.tensor(token_slots)
    ctx.uniform_slot = None
    ctx.active_slots = frozenset(s for s in slots if s)
    ctx.per_token = True
    ctx.rows = RowGather(
        index=index.view(-1), keep=keep.float(), slot_ids=torch.tensor(slots), longest=longest
    )
    with torch.inference_mode():
        got = layer(x[None])[0]
    expected = _expected(layer, x[:, None], token_slots, pairs)[:, 0]
    assert (got - expected).abs().max() < 1e-5
