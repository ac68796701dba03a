"""How the rows of one forward sit in the padded batch, and what the forward's outputs mean.

Rows of prompt adapters carry their virtual tokens in front of their own tokens, left-aligned
(`[virtual, tokens, pad]`), exactly as PEFT lays out each row alone: the pooler reads position
0, which is PEFT's position 0 for that row too (the first virtual token, or [CLS] for rows
without a prompt), and the default positions 0..n-1 are PEFT's. Rows of prefix adapters keep
their tokens in place; their positions start at their prefix length, as PEFT offsets them.
Batches without prompt or prefix rows take the plain path: ids, mask, token types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.runtime.layers import LayerSet
from app.runtime.prefix_attention import PrefixBatch, additive_mask, layer_kv
from app.runtime.prompts import prompt_embeddings


@dataclass
class Layout:
    """One forward's padded inputs and where each row's real tokens are."""

    ids: torch.Tensor  # [rows, width], each row's tokens at offset `starts[row]`
    mask: torch.Tensor  # [rows, width] attention over sequence positions (virtual ones too)
    types: torch.Tensor | None  # token type ids, or None when the tokenizer has none
    starts: list[int]  # position of each row's first real token (its prompt length)
    prompt_rows: list[int]  # row of each batch row in the prompt table (0: none)
    prefix_rows: list[int]  # row of each batch row in the prefix table (0: none)
    prefix_lengths: list[int]

    @property
    def token_mask(self) -> torch.Tensor:
        """[rows, width]: real input tokens only, for pooling (virtual tokens are not text)."""
        if not any(self.starts):
            return self.mask
        start = torch.tensor(self.starts, device=self.mask.device)[:, None]
        return self.mask * (torch.arange(self.mask.shape[1], device=self.mask.device) >= start)


def build_layout(
    rows: list[Any], slots: list[int], layers: LayerSet, *, pad_id: int, device: torch.device
) -> Layout:
    """Pad `rows` (EncodedRow-like: input_ids, token_type_ids) for the slots they run with."""
    count = len(rows)
    prompt_rows, starts = (
        layers.prompts.lookup(slots) if not layers.prompts.empty else ([0] * count, [0] * count)
    )
    prefixes = layers.prefixes
    prefix_rows, prefix_lengths = (
        prefixes.lookup(slots)
        if prefixes is not None and (not prefixes.empty)
        else ([0] * count, [0] * count)
    )
    width = max(s + len(r.input_ids) for s, r in zip(starts, rows, strict=True))
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    types = torch.zeros((count, width), dtype=torch.long)
    for n, (row, start) in enumerate(zip(rows, starts, strict=True)):
        end = start + len(row.input_ids)
        ids[n, start:end] = torch.tensor(row.input_ids)
        mask[n, :end] = 1  # PEFT attends to the virtual tokens: they are part of the row
        if row.token_type_ids is not None:
            types[n, start:end] = torch.tensor(row.token_type_ids)
    has_types = rows[0].token_type_ids is not None
    return Layout(
        ids.to(device),
        mask.to(device),
        types.to(device) if has_types else None,
        starts,
        prompt_rows,
        prefix_rows,
        prefix_lengths,
    )


def model_inputs(
    layout: Layout, layers: LayerSet, embed: nn.Module, max_positions: int | None
) -> dict[str, torch.Tensor]:
    """The base's keyword inputs; routes the prefixes when the batch has prefix rows.

    Runs under the engine's lock and `inference_mode`, after `layers.route`.
    """
    inputs: dict[str, torch.Tensor] = {"attention_mask": layout.mask}
    if layout.types is not None:
        inputs["token_type_ids"] = layout.types
    if any(layout.starts):
        inputs["inputs_embeds"] = prompt_embeddings(
            embed, layout.ids, layers.prompts, layout.prompt_rows, layout.starts
        )
    else:
        inputs["input_ids"] = layout.ids
    if any(layout.prefix_lengths) and layers.prefixes is not None:
        device = layout.mask.device
        lengths = torch.tensor(layout.prefix_lengths, device=device)
        positions = torch.arange(layout.mask.shape[1], device=device)[None, :] + lengths[:, None]
        if max_positions is not None:
            # Padding past a row's end may run off the table; it is masked, so clamp it.
            positions = positions.clamp(max=max_positions - 1)
        inputs["position_ids"] = positions
        layers.route_prefix(_serving_prefix(layout, layers, lengths, embed))
    return inputs


def _serving_prefix(
    layout: Layout, layers: LayerSet, lengths: torch.Tensor, embed: nn.Module
) -> PrefixBatch:
    table = layers.prefixes
    assert table is not None
    width = int(lengths.max())
    index = torch.tensor(layout.prefix_rows, dtype=torch.long, device=lengths.device)
    valid = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    dtype = next(embed.parameters()).dtype

    def kv(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Gathered per layer, so a batch holds one layer's prefixes at a time.
        return layer_kv(table.data[index, :width, layer])

    return PrefixBatch(kv=kv, mask=additive_mask(valid, layout.mask, dtype))


class Features:
    """Lazily pooled views of one forward's outputs."""

    def __init__(self, out: Any, layout: Layout, has_pooler: bool) -> None:
        self.out = out
        self.layout = layout
        self.starts = layout.starts
        self.has_pooler = has_pooler

    @property
    def last(self) -> torch.Tensor:
        return self.out.last_hidden_state

    def sentence(self, positions: list[int]) -> torch.Tensor:
        """What a *ForSequenceClassification head reads: the pooler, else the first position."""
        if self.has_pooler and self.out.pooler_output is not None:
            return self.out.pooler_output[positions]
        return self.last[positions, 0]

    def states(self, layers: list[int]) -> list[torch.Tensor]:
        """Hidden states of `layers` (the last one only when hidden states were not kept)."""
        hidden = self.out.hidden_states if self.out.hidden_states is not None else (self.last,)
        return [hidden[layer] for layer in layers]

    def pooled(
        self, positions: list[int], layers: list[int], pooling: str, *, concat: bool
    ) -> torch.Tensor:
        """Pooled real-token states of `layers`, concatenated (probe heads) or averaged."""
        mask = self.layout.token_mask[positions].unsqueeze(-1).to(self.last.dtype)
        parts = [
            self._shifted(state[positions], positions, pooling) for state in self.states(layers)
        ]
        parts = [pool(part, mask, pooling) for part in parts]
        return torch.cat(parts, dim=-1) if concat else torch.stack(parts).mean(dim=0)

    def tokens(self, positions: list[int], layers: list[int] | None = None) -> torch.Tensor:
        """[rows, width, features] per-token states: the last layer, or `layers` concatenated."""
        if layers is None:
            return self.last[positions]
        return torch.cat([state[positions] for state in self.states(layers)], dim=-1)

    def _shifted(self, hidden: torch.Tensor, positions: list[int], pooling: str) -> torch.Tensor:
        # `cls` pooling reads each row's first real token, past any virtual tokens.
        if pooling != "cls" or not any(self.starts[p] for p in positions):
            return hidden
        starts = torch.tensor([self.starts[p] for p in positions], device=hidden.device)
        return hidden[torch.arange(len(positions), device=hidden.device), starts].unsqueeze(1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Masked mean, first token, or masked max over the sequence."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
