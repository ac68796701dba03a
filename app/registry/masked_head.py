"""A language_modeling adapter's masked-LM head (`cls.predictions.*`), checked against the base.

A `language_modeling` adapter trained with `keep_head` stores BERT's MLM head beside its LoRA:
the transform (dense, LayerNorm) and the output bias, and the decoder weight only where it is
not tied to the base's word embeddings. These tensors are split from the body before the
method's own parse (they are no LoRA weights) and served by fill-mask (app/runtime/fill_mask.py).
"""

from __future__ import annotations

import torch

from app.base import FrozenBase
from app.errors import bad_request
from app.registry.finite import as_float32

__all__ = ["PREFIX", "split_masked_head"]

PREFIX = "cls.predictions."
_WEIGHTS = "adapter_model.safetensors"


def _shapes(base: FrozenBase) -> dict[str, tuple[int, ...]]:
    hidden, vocab = base.hidden_size, int(base.config.vocab_size)
    return {
        "transform.dense.weight": (hidden, hidden),
        "transform.dense.bias": (hidden,),
        "transform.LayerNorm.weight": (hidden,),
        "transform.LayerNorm.bias": (hidden,),
        "bias": (vocab,),
        "decoder.weight": (vocab, hidden),
    }


def split_masked_head(
    tensors: dict[str, torch.Tensor], *, base: FrozenBase
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the MLM head by its name under `cls.predictions.`, the other tensors); {} when the
    adapter kept no head. A head needs its transform and bias, each of this base's shape."""
    head = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    rest = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    if not head:
        return {}, rest
    if base.kind != "encoder":
        raise bad_request(
            "unexpected_head", "an MLM head is served on an encoder base only", param=_WEIGHTS
        )
    shapes = _shapes(base)
    missing = sorted(set(shapes) - {"decoder.weight"} - set(head))
    unknown = sorted(set(head) - set(shapes))
    if missing or unknown:
        raise bad_request(
            "invalid_head",
            f"an MLM head holds {PREFIX}{{{', '.join(sorted(shapes))}}}; "
            f"missing {missing}, unknown {unknown[:5]}",
            param=_WEIGHTS,
        )
    out = {}
    for name in sorted(head):
        if tuple(head[name].shape) != shapes[name]:
            raise bad_request(
                "shape_mismatch",
                f"{PREFIX}{name} is {tuple(head[name].shape)}; this base needs {shapes[name]}",
                param=_WEIGHTS,
            )
        out[name] = as_float32(
            head[name], runtime_dtype=torch.float32, what=PREFIX + name, param=_WEIGHTS
        )
    return out, rest
