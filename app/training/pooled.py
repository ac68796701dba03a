"""A sequence-level adapter whose head reads the mean of the last hidden states, not the pooler.

Sentence encoders (all-MiniLM-L6-v2 and the other sentence-transformers bases) were trained so
that the attention-masked mean of the last layer is the sentence embedding; their BERT pooler
([CLS] -> dense -> tanh) is a left-over of masked-LM pre-training that nothing tuned. A head on
the pooler starts from much worse features than one on mean-pooled ones (all-MiniLM-L6-v2, TREC
coarse, 16 rows a class, 3 seeds, logistic regression C=1: 0.28 on the pooler against 0.57 on the
mean), and a few hundred steps of LoRA do not make that up.
So LoRA and IA3 on an encoder put the head where `linear_probe` puts it: the LP-FT start is
then exactly the probe, and fine-tuning moves from there.

The files stay PEFT's (the body and `modules_to_save: ["classifier"]`), plus two keys PEFT
ignores, `layers` and `pooling`, which tell the registry where the served head reads, as a
probe's files do (app.registry.probe_format).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from app.base import FrozenBase
from app.methods import METHODS
from app.runtime.batch import pool
from app.tasks import Readout, get_task, head_task

POOLING = "mean"
LAYERS = [-1]
_CONFIG = "adapter_config.json"


class PooledHeadModel(nn.Module):
    """A PEFT model over a sequence-classification view, read out at the mean-pooled last layer.

    Callers use it as they use the PEFT model: `model(**batch)` gives `.loss` and `.logits`,
    `save_pretrained` writes PEFT's files. `embed` gives the pooled features with gradients
    through the adapter (contrastive training needs them without the head).
    """

    def __init__(self, peft: nn.Module, *, backbone: str, task: str) -> None:
        super().__init__()
        self.peft = peft  # a PeftModel: its wrapped view is `base_model.model`
        wrapped: Any = peft
        view: Any = wrapped.base_model.model
        self.task = task
        self._objective = head_task(task).objective
        self._backbone_name = backbone
        config = view.config
        rate = getattr(config, "classifier_dropout", None)
        if rate is None:
            rate = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(float(rate if rate is not None else 0.1))

    @property
    def backbone(self) -> nn.Module:
        """The view's encoder, with the adapter injected into its layers."""
        wrapped: Any = self.peft
        module: nn.Module = getattr(wrapped.base_model.model, self._backbone_name)
        return module

    @property
    def head(self) -> nn.Module:
        """The head (PEFT's trainable copy of `classifier`)."""
        wrapped: Any = self.peft
        module: nn.Module = wrapped.base_model.model.classifier
        return module

    def embed(self, **batch: torch.Tensor) -> torch.Tensor:
        """[rows, hidden]: the attention-masked mean of the last hidden states."""
        batch = {k: v for k, v in batch.items() if k != "labels"}
        hidden = self.backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return pool(hidden, mask, POOLING)

    def forward(
        self, labels: torch.Tensor | None = None, **batch: torch.Tensor
    ) -> SequenceClassifierOutput:
        """Logits of the head on the pooled features, and the task's loss when labelled."""
        logits = self.head(self.dropout(self.embed(**batch)))
        # The task's loss is transformers' own for its problem type.
        loss = None if labels is None else self._objective.loss(logits, labels, reduction="mean")
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, folder: str) -> None:
        """PEFT's files, with the head's read-out recorded in the config."""
        wrapped: Any = self.peft
        wrapped.save_pretrained(folder)
        mark_pooled(Path(folder) / _CONFIG)


def reads_pooled(base: FrozenBase, *, task: str, method: str) -> bool:
    """Whether a trained adapter of `method` for `task` on `base` gets a mean-pooled head:
    LoRA and IA3 on an encoder, for sequence-level tasks. Prompt and prefix tuning keep the
    pooler, which reads their first virtual token (their prompts start from [CLS])."""
    pooled = get_task(task).readout is Readout.POOLED  # token heads read every token
    return base.kind == "encoder" and pooled and METHODS[method].traits.pooled_head


def mark_pooled(config_path: Path, **extra: Any) -> None:
    """Add `layers`/`pooling` (and any `extra` keys PEFT ignores) to a saved adapter config."""
    config = json.loads(config_path.read_text())
    config.update({"layers": list(LAYERS), "pooling": POOLING, **extra})
    config_path.write_text(json.dumps(config, indent=2))
