"""fill-mask: a language_modeling adapter's kept MLM head over the adapted encoder's tokens.

The head is BERT's (`cls.predictions`): dense, the base's activation, LayerNorm, then the
decoder (the base's word embeddings unless the adapter stored its own) plus a bias. It runs
on the mask position only, in float32 like every served head. Outputs are the fill-mask
pipeline's: per input, `top_k` dicts of `score`, `token`, `token_str` and `sequence`; the
first mask token of an input is the one filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from transformers.activations import get_activation

from app.base import FrozenBase
from app.errors import SwitchyardError, bad_request
from app.tasks.language_modeling import check_top_k, fill_mask_rows

__all__ = ["check_fill_mask", "fill_mask"]


class Row(Protocol):
    """A tokenized request input (app.runtime.engine.EncodedRow)."""

    input_ids: list[int]


def check_fill_mask(
    rows: Sequence[Row], head: dict[str, torch.Tensor], *, base: FrozenBase, name: str,
    params: dict[str, Any],
) -> SwitchyardError | None:  # fmt: skip
    """The request's error before it runs: a bad top_k, no head, an input without a mask."""
    try:
        check_top_k(params)
    except SwitchyardError as exc:
        return exc
    if not head:
        return bad_request(
            "no_mlm_head",
            f"adapter {name!r} kept no MLM head (train it with keep_head true); "
            "its embeddings are served by /v1/embeddings",
            param="name",
        )
    mask = base.tokenizer.mask_token_id
    for index, row in enumerate(rows):
        if mask is None or mask not in row.input_ids:
            return bad_request(
                "no_mask_token",
                f"input {index} has no mask token {base.tokenizer.mask_token!r}",
                param=f"inputs[{index}]",
            )
    return None


def fill_mask(
    hidden: list[torch.Tensor],
    *,
    head: dict[str, torch.Tensor],
    rows: Sequence[Row],
    base: FrozenBase,
    params: dict[str, Any],
) -> list[list[dict[str, Any]]]:
    """Each row's top tokens at its first mask; `hidden` is each row's [tokens, hidden]."""
    mask = int(base.tokenizer.mask_token_id)
    states = torch.stack(
        [h[row.input_ids.index(mask)] for h, row in zip(hidden, rows, strict=True)]
    )
    logits = _head(states.float(), head, base)
    return fill_mask_rows(
        logits,
        rows=[row.input_ids for row in rows],
        mask_id=mask,
        top_k=check_top_k(params),
        decode=base.tokenizer.decode,
    )


def _head(x: torch.Tensor, head: dict[str, torch.Tensor], base: FrozenBase) -> torch.Tensor:
    config = base.config
    x = F.linear(x, head["transform.dense.weight"], head["transform.dense.bias"])
    x = get_activation(str(getattr(config, "hidden_act", "gelu")))(x)
    eps = float(getattr(config, "layer_norm_eps", 1e-12))
    x = F.layer_norm(
        x, (x.shape[-1],), head["transform.LayerNorm.weight"], head["transform.LayerNorm.bias"], eps
    )
    decoder = head.get("decoder.weight")
    if decoder is None:  # tied: the base's word embeddings
        decoder = cast(torch.Tensor, base.model.get_input_embeddings().weight)
    return F.linear(x, decoder.float(), head["bias"])
