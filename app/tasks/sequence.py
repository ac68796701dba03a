"""What the sequence-level head tasks share: text (or text pair) rows, one pooled vector a row."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.tasks.base import Example, Objective, Outputs, Readout, Row


class SequenceTask(ABC):
    """Base of classification, multi-label and regression: tokenizing `text` and `text_pair`
    and collating one label a row are the same for the three; the label itself is not."""

    kinds: frozenset[str] = frozenset({"encoder"})
    readout = Readout.POOLED
    methods: tuple[str, ...] | None = None
    objective: Objective

    @abstractmethod
    def label(self, row: Row, index: dict[str, int]) -> Any:
        """The encoded label of a normalised row."""

    def claims(self, rows: Sequence[Row]) -> bool:
        """A family's own task takes its rows unless a variant claims them."""
        return False

    def encode(
        self,
        row: Row,
        tokenizer: PreTrainedTokenizerBase,
        *,
        index: dict[str, int],
        max_length: int,
    ) -> Example:
        """The text (and pair) tokenized and truncated, with the encoded label."""
        enc = tokenizer(row["text"], row.get("text_pair"), truncation=True, max_length=max_length)
        return Example(enc["input_ids"], enc.get("token_type_ids"), self.label(row, index))

    def token_count(self, row: Row, tokenizer: PreTrainedTokenizerBase) -> int:
        """Untruncated tokens of the text (and pair)."""
        return len(tokenizer(row["text"], row.get("text_pair"))["input_ids"])

    def collate_labels(self, chunk: list[Example], width: int) -> torch.Tensor:
        """One label a row, in the objective's dtype."""
        return torch.tensor([e.label for e in chunk], dtype=self.objective.label_dtype)


def as_matrix(logits: Outputs) -> torch.Tensor:
    """[rows, outputs] logits, from a tensor or from one row each."""
    return logits if isinstance(logits, torch.Tensor) else torch.stack(logits)
