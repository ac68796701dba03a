"""`method: "prompt"`: learned input embeddings in front of each row (PEFT's prompt tuning).

Files: PEFT's `PROMPT_TUNING` config and one `prompt_embeddings` [virtual, hidden] tensor.
Served by the per-slot virtual-token table of app/runtime/prompts.py (`VirtualTable`,
`prompt_embeddings`). Trained as PEFT's own model, encoders only; its virtual tokens take the
base's positions, so they shorten the longest text a job can take.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model
from pydantic import Field
from torch import nn

from app.base import FrozenBase
from app.methods.base import (
    WEIGHTS,
    Entry,
    Parsing,
    StrictSpec,
    Traits,
    Wrapping,
    spec,
    task_type,
    virtual,
)
from app.registry.finite import as_float32
from app.tasks.generation import IGNORE  # light: app.training.encoding pulls in seqeval
from app.training.prefix import FIRST_WORD_ID  # special or unused pieces lie below it


class PromptConfigSpec(StrictSpec):
    """The fields of PEFT's PromptTuningConfig that serving acts on."""

    peft_type: Literal["PROMPT_TUNING"]
    num_virtual_tokens: int = Field(ge=1, le=1024)


class PromptFiles:
    """PEFT's PROMPT_TUNING files."""

    peft_type = "PROMPT_TUNING"

    def parse(self, job: Parsing) -> int:
        """The one `prompt_embeddings` tensor, [virtual, hidden] for this base."""
        prompt: PromptConfigSpec = spec(PromptConfigSpec, job.config)
        emb = virtual(job.body, prompt.num_virtual_tokens, job.base.hidden_size)
        job.weights.prompt = as_float32(
            emb, runtime_dtype=job.base.dtype, what="prompt_embeddings", param=WEIGHTS
        )
        return 1


class PromptTokenModel(nn.Module):
    """Prompt tuning for token classification: PEFT's logits include the virtual positions.

    Labels get `virtual` ignored positions in front, and logits lose them, so the loop, the
    evaluation and the served outputs all see one logit row per real token.
    """

    def __init__(self, peft: PeftModel, virtual: int) -> None:
        super().__init__()
        self.peft = peft
        self.virtual = virtual

    def forward(self, labels: torch.Tensor | None = None, **batch: torch.Tensor) -> Any:
        if labels is not None:
            labels = F.pad(labels, (self.virtual, 0), value=IGNORE)
        out = self.peft(labels=labels, **batch)
        out.logits = out.logits[:, self.virtual :]
        return out

    def save_pretrained(self, folder: str) -> None:
        self.peft.save_pretrained(folder)


class PromptTrainer:
    """PEFT's prompt tuning, its prompt started from real word embeddings."""

    def wrap(self, job: Wrapping) -> nn.Module:
        """PEFT's prompt-tuning model over an encoder view (virtual positions cut off the
        logits for token classification)."""
        kind = task_type(job.task)
        count = job.hp.num_virtual_tokens
        config = PromptTuningConfig(task_type=kind, num_virtual_tokens=count)
        model: Any = get_peft_model(job.view, config)
        prompt = model.prompt_encoder[model.active_adapter].embedding.weight
        _init_prompt(prompt, job.view, job.base, seed=job.hp.seed)
        return PromptTokenModel(model, count) if kind == TaskType.TOKEN_CLS else model


@torch.no_grad()
def _init_prompt(prompt: torch.Tensor, view: nn.Module, base: FrozenBase, *, seed: int) -> None:
    """Start from real embeddings: [CLS] first, then random words.

    The pooler reads the first virtual token; as [CLS] at position 0 it is what the LP-FT head
    was fitted on, so training starts near the probe instead of from a random read-out.
    """
    model: Any = view
    words: torch.Tensor = model.get_input_embeddings().weight
    vocab = words.shape[0]
    generator = torch.Generator().manual_seed(seed)
    low = FIRST_WORD_ID if vocab > 2 * FIRST_WORD_ID else 0
    ids = torch.randint(low, vocab, (prompt.shape[0],), generator=generator)
    cls = base.tokenizer.cls_token_id
    if cls is not None:
        ids[0] = int(cls)
    prompt.copy_(words[ids.to(words.device)].to(prompt.dtype))


PROMPT = Entry(
    name="prompt",
    traits=Traits(virtual_positions=True, learning_rate=3e-2, min_steps=600),
    files=PromptFiles(),
    trainer=PromptTrainer(),
)
