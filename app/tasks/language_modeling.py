"""Language modeling: unlabelled domain text, the base's own self-supervised objective.

Rows are `{"text": ...}` documents. On an encoder the objective is masked LM (BERT's 80/10/10
on about 15% of the tokens) and the adapter is served as embeddings (`/v1/embeddings` with the
adapter) and, when it kept its MLM head, as `fill-mask` through predict. On a decoder the
objective is next-token prediction and the adapter is stored as a `generation` adapter, served
by the generate and chat routes. Training is app/training/language_modeling.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from app.errors import bad_request
from app.tasks.base import Readout, Row, RowProblem, Unlabeled, show

__all__ = [
    "DEFAULT_TOP_K",
    "MAX_TOP_K",
    "METHODS_ON",
    "NAME",
    "TASK",
    "check_top_k",
    "fill_mask_rows",
]

NAME = "language_modeling"
METHODS = ("lora", "prefix", "auto")  # auto: lora
# Prefix tuning of an encoder exists for classification heads only (app/training/prefix.py).
METHODS_ON = {"encoder": ("lora", "auto"), "decoder": METHODS}
DEFAULT_TOP_K = 5
MAX_TOP_K = 100


class LanguageModeling(Unlabeled):
    """Rows `{"text"}`; masked LM on an encoder, causal LM on a decoder."""

    name = NAME
    order = 6
    aliases: tuple[str, ...] = ("lm", "mlm", "causal_lm")
    kinds: frozenset[str] = frozenset({"encoder", "decoder"})
    readout = Readout.MASKED
    parameters: frozenset[str] = frozenset({"top_k"})
    methods: tuple[str, ...] | None = METHODS
    methods_on: dict[str, tuple[str, ...]] = METHODS_ON  # narrower, by base kind
    single_label = False
    family = NAME
    # No columns: `{"text"}` alone is also an unlabelled classification row, whose error
    # ("no label column") must stay; the task is always named by the job or the dataset.
    columns: tuple[str, ...] = ()
    detect_rank = 9
    primary_metric = "loss"  # held-out loss: lower is better

    def check_row(self, row: Row) -> Row:
        """A non-empty `text`."""
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise RowProblem(f"text must be a non-empty string, got {show(text)}")
        return {"text": text}


def check_top_k(params: dict[str, Any]) -> int:
    """fill-mask's `top_k`: an integer in [1, MAX_TOP_K]; a 400 naming the value and limit."""
    top_k = params.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise bad_request(
            "invalid_parameter",
            f"top_k {top_k!r} must be an integer in [1, {MAX_TOP_K}]",
            param="parameters.top_k",
        )
    return top_k


def fill_mask_rows(
    logits: torch.Tensor,
    *,
    rows: Sequence[list[int]],
    mask_id: int,
    top_k: int,
    decode: Any,
) -> list[list[dict[str, Any]]]:
    """Pipeline-shaped fill-mask outputs: per input, the `top_k` tokens of its first mask
    position (`logits` [inputs, vocab] there) with their score, token id and the sequence
    they make."""
    out = []
    for row_logits, ids in zip(logits, rows, strict=True):
        where = ids.index(mask_id)
        probs = row_logits.float().softmax(dim=-1)
        scores, tokens = probs.topk(min(top_k, probs.shape[-1]))
        found = []
        for score, token in zip(scores.tolist(), tokens.tolist(), strict=True):
            filled = list(ids)
            filled[where] = int(token)
            found.append(
                {
                    "score": float(score),
                    "token": int(token),
                    "token_str": str(decode([int(token)])).strip(),
                    "sequence": str(decode(filled, skip_special_tokens=True)),
                }
            )
        out.append(found)
    return out


TASK = LanguageModeling()
