"""Per-slot virtual tokens: the stacked table behind prompt tuning (and prefix tuning).

Prompt and prefix adapters carry a variable number of virtual tokens. Each resident one gets a
row of a padded table `[rows, virtual capacity, *item]`; a batch gathers its rows once and
masks what lies past each row's own length. Rows are allocated only for adapters that have
virtual tokens (slot -> row), so a service with 128 LoRA slots and one prefix adapter holds
one prefix row, not 128.
"""

from __future__ import annotations

import torch
from torch import nn


class VirtualTable:
    """Variable-length per-slot tensors `[virtual, *item]`, stacked and padded on the device."""

    def __init__(
        self, item_shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.item_shape = item_shape
        # Row 0 is the empty prompt: rows without virtual tokens gather it (zero length).
        self.data = torch.zeros(1, 0, *item_shape, device=device, dtype=dtype)
        self.lengths: list[int] = [0]
        self._row_of_slot: dict[int, int] = {}
        self._free_rows: list[int] = []

    @property
    def empty(self) -> bool:
        """True when no resident adapter has virtual tokens: batches skip all the work."""
        return not self._row_of_slot

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def assign(self, slot: int, values: torch.Tensor | None) -> None:
        """Copy `values` [virtual, *item] into `slot`'s row, or free the row when None."""
        row = self._row_of_slot.pop(slot, None)
        if row is not None:
            self.data[row].zero_()
            self.lengths[row] = 0
            self._free_rows.append(row)
        if values is None:
            return
        if tuple(values.shape[1:]) != self.item_shape:
            raise ValueError(f"virtual tokens {tuple(values.shape)} do not fit {self.item_shape}")
        row = self._free_rows.pop() if self._free_rows else self._grow_rows()
        self._grow_length(values.shape[0])
        self.data[row, : values.shape[0]].copy_(values)
        self.lengths[row] = int(values.shape[0])
        self._row_of_slot[slot] = row

    def lookup(self, slots: list[int]) -> tuple[list[int], list[int]]:
        """(table row, virtual length) of each batch row; row 0 / length 0 without one."""
        rows = [self._row_of_slot.get(s, 0) for s in slots]
        return rows, [self.lengths[r] for r in rows]

    def gather(self, rows: torch.Tensor, width: int) -> torch.Tensor:
        """[batch, width, *item]: each batch row's virtual tokens, zero past its length."""
        return self.data[rows, :width]

    def _grow_rows(self) -> int:
        row = len(self.lengths)
        if row >= self.data.shape[0]:
            # Doubling keeps reallocations rare when many prompt adapters arrive one by one.
            grown = self.data.new_zeros(max(2 * self.data.shape[0], row + 1), *self.data.shape[1:])
            grown[: self.data.shape[0]] = self.data
            self.data = grown
        self.lengths.append(0)
        return row

    def _grow_length(self, length: int) -> None:
        if length <= self.data.shape[1]:
            return
        grown = self.data.new_zeros(self.data.shape[0], length, *self.item_shape)
        grown[:, : self.data.shape[1]] = self.data
        self.data = grown


def prompt_embeddings(
    embed: nn.Module, ids: torch.Tensor, table: VirtualTable, rows: list[int], lengths: list[int]
) -> torch.Tensor:
    """Input embeddings with each row's virtual tokens at positions [0, its prompt length).

    `ids` already holds each row's tokens shifted right by its prompt length (the engine's
    layout), so the virtual tokens simply replace the pad embeddings in front. This is PEFT's
    `cat(prompts, word_embeddings(input_ids))`, done per row for rows of different prompts.
    """
    embeds: torch.Tensor = embed(ids)
    width = max(lengths)
    index = torch.tensor(rows, dtype=torch.long, device=ids.device)
    virtual = table.gather(index, width).to(embeds.dtype)
    virtual = nn.functional.pad(virtual, (0, 0, 0, ids.shape[1] - width))
    size = torch.tensor(lengths, device=ids.device)
    is_virtual = torch.arange(ids.shape[1], device=ids.device)[None, :] < size[:, None]
    return torch.where(is_virtual[..., None], virtual, embeds)
