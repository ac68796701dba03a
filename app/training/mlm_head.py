"""The masked-LM head a `language_modeling` run trains through on an encoder.

A folder saved from a `*ForMaskedLM` model has its head (`cls.predictions.*`): it is loaded
and kept frozen, the pre-training the base came with. A folder without one (the packaged
MiniLM is a bare `BertModel`) gets a new BERT-style head: a dense layer, GELU and LayerNorm
(initialised as BERT initialises them) and a decoder tied to the word embeddings, plus a bias;
it is trained with the adapter. Either way the head is discarded after training unless the job
sets `keep_head`, which stores its tensors (`cls.predictions.*`, never the tied decoder) in
the adapter's safetensors so the adapter also serves fill-mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from app.base import FrozenBase
from app.training.view import build_view

__all__ = ["HEAD_PREFIX", "MaskedHead", "head_tensors", "masked_lm_view"]

HEAD_PREFIX = "cls.predictions."


@dataclass(frozen=True)
class MaskedHead:
    """Where a run's MLM head came from and whether it trains."""

    source: str  # "checkpoint" (the folder's, frozen) or "created" (tied, trained)
    trained: bool

    def as_json(self) -> dict[str, object]:
        """What the job shows about the head."""
        return {"source": self.source, "trained": self.trained}


def masked_lm_view(base: FrozenBase, *, task: str) -> tuple[PreTrainedModel, MaskedHead]:
    """`*ForMaskedLM` over the base's own tensors, with the folder's head or a new one."""
    view = build_view(base, task=task, num_labels=0)
    stored = checkpoint_head(base.path)
    params = dict(view.named_parameters())
    with torch.no_grad():
        if stored:
            for name, tensor in stored.items():
                if name in params:
                    params[name].copy_(tensor.to(params[name].dtype))
        else:
            for name, param in params.items():
                if name.startswith(HEAD_PREFIX) and "LayerNorm.weight" in name:
                    param.fill_(1.0)  # BERT's init; the view's generic init left zeros
    view.tie_weights()
    trained = not stored
    for name, param in view.named_parameters():
        param.requires_grad_(trained and name.startswith(HEAD_PREFIX) and _own(view, param))
    return view, MaskedHead("checkpoint" if stored else "created", trained)


def checkpoint_head(folder: Path) -> dict[str, torch.Tensor]:
    """The `cls.predictions.*` tensors of a folder's safetensors files ({} when none)."""
    found: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.startswith(HEAD_PREFIX):
                    found[key] = handle.get_tensor(key)
    return found


def head_tensors(view: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The head's tensors as an adapter stores them: the tied decoder weight is the base's
    word embeddings, so it is left out."""
    return {
        name: param.detach().to("cpu", torch.float32).contiguous()
        for name, param in view.named_parameters()
        if name.startswith(HEAD_PREFIX) and _own(view, param)
    }


def _own(view: PreTrainedModel, param: torch.Tensor) -> bool:
    """Not the word-embedding matrix a tied decoder shares."""
    return param is not view.get_input_embeddings().weight
