"""Sequence packing: a batch's rows laid end to end in a few bins instead of padded to the
longest row, so the linear layers (most of an encoder's cost) see no padding tokens.

Real requests vary in length: eight random SST-2 sentences padded to the longest hold 1.6x
their real tokens, and the padding costs as much as real tokens in every linear layer. Packed,
each bin is one sequence of several rows with a block-diagonal attention mask (a token attends
only to its own row), positions restart at each row, and the outputs are put back into the
padded layout afterwards, so pooling, heads and decoding never see the difference: a packed
forward gives the padded forward's numbers (the tests check < 1e-4).

Packing is used only where it is exact and pays:
- the base says how it numbers positions and takes a ready 4D mask (`PackingRule`);
- no row carries virtual tokens (prompt rows change the positions, prefix rows the
  attention, both per row);
- it saves at least `MIN_SAVING` of the padded tokens.
Bins hold at most `max_tokens` tokens (a row longer than that gets a bin of its own), because
attention inside a bin costs the square of its length. Rows go into bins in batch order
(next fit), which keeps the engine's slot order, so each adapter's tokens stay in one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

# Below this share of padded tokens saved, a packed forward's extra work (the mask, the
# unpacking copies, per-token LoRA routing) is not worth it.
MIN_SAVING = 0.15


@dataclass(frozen=True)
class PackingRule:
    """How a base family numbers positions, and the attention mask form it takes."""

    position_offset: int  # position of a row's first token (BERT 0)
    boolean_mask: bool  # SDPA takes True-to-attend; eager attention adds 0 / min


# Families whose embeddings take explicit position_ids and whose attention takes a ready 4D
# mask as it is. RoBERTa-style bases number positions from padding_idx + 1 and are left out
# until a test covers them.
_RULES = {"bert": 0}


def packing_rule(model: nn.Module) -> PackingRule | None:
    """The base's rule, or None when packing would not be exact for it."""
    config = getattr(model, "config", None)
    offset = _RULES.get(str(getattr(config, "model_type", "")))
    attention = getattr(config, "_attn_implementation", None)
    if offset is None or attention not in ("sdpa", "eager"):
        return None
    return PackingRule(position_offset=offset, boolean_mask=attention == "sdpa")


@dataclass(frozen=True)
class PackPlan:
    """Where each row sits: `places[row]` = (bin, offset); bins are `width` tokens long."""

    bins: int
    width: int
    places: tuple[tuple[int, int], ...]
    lengths: tuple[int, ...]

    def token_slots(self, slots: Sequence[int]) -> list[int]:
        """Each packed position's slot, bin by bin. A bin's padding takes the slot of the bin's
        last row: nothing reads padding states, and so one adapter's batch stays uniform (the
        layers' fast path) and padding never splits a run of equal slots."""
        out = [0] * (self.bins * self.width)
        for (bin_, offset), slot in zip(self.places, slots, strict=True):
            start = bin_ * self.width + offset
            out[start : (bin_ + 1) * self.width] = [slot] * (self.width - offset)
        return out


def plan_packing(lengths: Sequence[int], *, max_tokens: int) -> PackPlan | None:
    """Next-fit packing of rows of `lengths` into bins of at most `max_tokens`; None when it
    would save less than MIN_SAVING of the padded tokens (or there is nothing to pack)."""
    if len(lengths) < 2 or max_tokens <= 0:
        return None
    capacity = max(max_tokens, max(lengths))
    places: list[tuple[int, int]] = []
    fill = [0]
    for length in lengths:
        if fill[-1] and fill[-1] + length > capacity:
            fill.append(0)
        places.append((len(fill) - 1, fill[-1]))
        fill[-1] += length
    width = max(fill)
    padded = len(lengths) * max(lengths)
    if len(fill) * width > (1 - MIN_SAVING) * padded:
        return None
    return PackPlan(len(fill), width, tuple(places), tuple(lengths))


def packed_inputs(
    plan: PackPlan,
    ids: Sequence[Sequence[int]],
    types: Sequence[Sequence[int] | None] | None,
    *,
    rule: PackingRule,
    pad_id: int,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The base's keyword inputs for the packed bins: ids, token types, positions, 4D mask."""
    shape = (plan.bins, plan.width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    token_types = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    # Each row's tokens share a segment id; padding gets segment -1, so a padding position
    # attends to the other padding of its bin and no query row is left with nothing to
    # attend to (an all-masked row would be NaN, and NaN values poison the masked sums).
    segment = torch.full(shape, -1, dtype=torch.long)
    for row, ((bin_, offset), length) in enumerate(zip(plan.places, plan.lengths, strict=True)):
        span = slice(offset, offset + length)
        input_ids[bin_, span] = torch.tensor(ids[row])
        if types is not None and types[row]:  # a row without types keeps type 0
            token_types[bin_, span] = torch.tensor(types[row])
        positions[bin_, span] = torch.arange(rule.position_offset, rule.position_offset + length)
        segment[bin_, span] = row
    keep = (segment[:, :, None] == segment[:, None, :])[:, None]  # [bins, 1, width, width]
    if rule.boolean_mask:
        mask = keep
    else:
        low = torch.finfo(dtype).min
        mask = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, low)
    inputs = {
        "input_ids": input_ids,
        "position_ids": positions,
        "attention_mask": mask,
    }
    if types is not None:
        inputs["token_type_ids"] = token_types
    return {name: value.to(device) for name, value in inputs.items()}


def row_index(plan: PackPlan, device: torch.device) -> torch.Tensor:
    """[rows, longest row]: each padded-layout position's place in the flattened bins.

    Padding positions point at their row's first token (any real state: readers mask them).
    """
    longest = max(plan.lengths)
    index = torch.zeros(len(plan.lengths), longest, dtype=torch.long)
    for row, ((bin_, offset), length) in enumerate(zip(plan.places, plan.lengths, strict=True)):
        start = bin_ * plan.width + offset
        index[row, :length] = torch.arange(start, start + length)
        index[row, length:] = start
    return index.to(device)


def unpack(
    out: BaseModelOutputWithPooling,
    index: torch.Tensor,
    *,
    pooler: nn.Module | None,
) -> BaseModelOutputWithPooling:
    """The packed forward's outputs in the padded layout [rows, longest row, hidden], by
    `row_index`. The pooler is run again per row: the packed one read each bin's first token.
    """
    last_state = out.last_hidden_state
    assert last_state is not None

    def spread(packed: torch.Tensor) -> torch.Tensor:
        flat = packed.reshape(-1, packed.shape[-1])
        return flat[index.view(-1)].view(*index.shape, packed.shape[-1])

    last = spread(last_state)
    hidden = tuple(spread(h) for h in out.hidden_states) if out.hidden_states else None
    return BaseModelOutputWithPooling(
        last_hidden_state=last,
        pooler_output=pooler(last) if pooler is not None else None,
        hidden_states=hidden,
    )
