"""A language_modeling adapter's kept MLM head (app/registry/masked_head.py): split from the
LoRA body when complete and shaped for the base, refused with a 400 naming the tensor else."""

from __future__ import annotations

import pytest
import torch

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.registry.masked_head import split_masked_head


def _head(hidden: int, vocab: int) -> dict[str, torch.Tensor]:
    return {
        "cls.predictions.transform.dense.weight": torch.zeros(hidden, hidden),
        "cls.predictions.transform.dense.bias": torch.zeros(hidden),
        "cls.predictions.transform.LayerNorm.weight": torch.ones(hidden),
        "cls.predictions.transform.LayerNorm.bias": torch.zeros(hidden),
        "cls.predictions.bias": torch.zeros(vocab),
    }


def test_a_complete_head_is_split_from_the_body(tiny_base: FrozenBase) -> None:
    body = {"encoder.layer.0.attention.self.query.lora_A.weight": torch.zeros(4, 32)}
    head, rest = split_masked_head(
        {**_head(32, tiny_base.config.vocab_size), **body}, base=tiny_base
    )
    assert rest == body and sorted(head) == [
        "bias",
        "transform.LayerNorm.bias",
        "transform.LayerNorm.weight",
        "transform.dense.bias",
        "transform.dense.weight",
    ]
    assert split_masked_head(body, base=tiny_base) == ({}, body)  # no head kept


def test_a_wrong_shape_or_a_missing_tensor_is_a_400(tiny_base: FrozenBase) -> None:
    wrong = _head(32, 7)
    with pytest.raises(SwitchyardError) as caught:
        split_masked_head(wrong, base=tiny_base)
    assert caught.value.code == "shape_mismatch" and "cls.predictions.bias" in caught.value.message
    partial = _head(32, tiny_base.config.vocab_size)
    del partial["cls.predictions.transform.dense.bias"]
    with pytest.raises(SwitchyardError) as caught:
        split_masked_head(partial, base=tiny_base)
    assert caught.value.code == "invalid_head" and "transform.dense.bias" in caught.value.message
