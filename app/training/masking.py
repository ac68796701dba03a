"""BERT's masking rule for masked-LM training, through transformers' own collator.

Of the tokens that are not special (CLS, SEP, padding), each is selected with probability
`probability` (0.15 by default); a selected token is replaced by the mask token 80% of the
time, by a random token 10% of the time and kept 10% of the time, and only selected tokens
carry a label. Whole-word masking selects words (runs of tokens with no gap in the text's
character offsets) instead; transformers then replaces every token of a selected word by the
mask token (no random or kept tokens), which is its documented rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from app.tasks.base import IGNORE

__all__ = ["Masked", "Masker"]


@dataclass(frozen=True)
class Masked:
    """A batch's masked inputs and labels (IGNORE where a token was not selected)."""

    input_ids: torch.Tensor
    labels: torch.Tensor


@dataclass
class Masker:
    """Masks padded batches; seeded, so a run's masks are the same on every rerun."""

    tokenizer: PreTrainedTokenizerBase
    probability: float = 0.15
    whole_word: bool = False
    seed: int = 0
    _collator: DataCollatorForLanguageModeling = field(init=False)

    def __post_init__(self) -> None:
        with warnings.catch_warnings():
            # Whole-word masking warns that it drops the 10/10 replacements: documented above.
            warnings.simplefilter("ignore", UserWarning)
            self._collator = DataCollatorForLanguageModeling(
                self.tokenizer,
                mlm=True,
                mlm_probability=self.probability,
                whole_word_mask=self.whole_word,
                seed=self.seed,
            )
        self._collator.generator = torch.Generator().manual_seed(self.seed)

    def mask(
        self,
        input_ids: torch.Tensor,
        *,
        special: torch.Tensor,
        offsets: torch.Tensor | None = None,
    ) -> Masked:
        """Mask `input_ids` [rows, width] on the CPU; `special` marks positions never masked
        (special tokens and padding); `offsets` [rows, width, 2] (character spans) are what
        whole-word masking groups tokens by."""
        ids = input_ids.detach().to("cpu", copy=True)
        if self.whole_word and offsets is None:
            raise ValueError("whole-word masking needs the tokens' character offsets")
        spans = np.asarray(offsets.cpu()) if offsets is not None else None
        inputs, labels = self._collator.torch_mask_tokens(ids, special.cpu().long(), spans)
        labels = torch.as_tensor(labels)
        labels[special.cpu().bool()] = IGNORE
        return Masked(torch.as_tensor(inputs), labels)
