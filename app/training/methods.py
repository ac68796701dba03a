"""The trainable adapter of each method, wrapped around the training view.

LoRA, IA3 and prompt tuning are PEFT's own models (so their files are PEFT's); prefix tuning is
ours (see `app.training.prefix`). Each keeps the head under PEFT's `modules_to_save` name, which
is how the trainer tells head parameters (higher learning rate) from the adapter's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, TaskType, get_peft_model
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.tasks import Readout, get_task
from app.training.encoding import IGNORE
from app.training.hyperparameters import Hyperparameters

# Pieces below this id are special or unused in BERT vocabularies (one definition, prefix.py).
from app.training.prefix import _FIRST_WORD_ID, PrefixModel


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


AdapterModel = PeftModel | PrefixModel | PromptTokenModel


def wrap(
    view: nn.Module,
    method: str,
    hp: Hyperparameters,
    task: str,
    base: FrozenBase,
    *,
    targets: list[str] | None = None,
) -> AdapterModel:
    """The trainable model of `method` over `view` (its head already initialised).

    `targets` are the view's module names that `hp.target_modules` resolved to
    (app/training/targets.py); PEFT gets them rather than the user's pattern, so it never runs
    a user's regular expression itself.
    """
    per_token = get_task(task).readout is Readout.TOKENS
    task_type = TaskType.TOKEN_CLS if per_token else TaskType.SEQ_CLS
    if method == "lora":
        config: Any = LoraConfig(
            task_type=task_type,
            r=hp.rank,
            lora_alpha=hp.alpha or 2 * hp.rank,  # type: ignore[arg-type]
            lora_dropout=hp.dropout,
            target_modules=targets if targets is not None else hp.target_modules,
            modules_to_save=["classifier"],
        )
        return get_peft_model(view, config)
    if method == "ia3":
        return get_peft_model(view, _ia3_config(hp, task_type, targets))
    if method == "prompt":
        return _prompt(view, hp, task_type, base)
    if method == "prefix":
        if base.kind != "encoder":
            raise bad_request(
                "unsupported_method", "prefix tuning needs an encoder base", param="method"
            )
        return PrefixModel(
            view, virtual=hp.num_virtual_tokens, task_type=task_type.value, base_path=str(base.path)
        )
    raise bad_request(
        "unsupported_method", f"method {method!r} cannot be trained on this base", param="method"
    )


def _ia3_config(hp: Hyperparameters, task_type: TaskType, resolved: list[str] | None) -> IA3Config:
    """PEFT's IA3 defaults for the architecture, unless the user names the modules."""
    if resolved is None and hp.target_modules == "all-linear":
        return IA3Config(task_type=task_type, modules_to_save=["classifier"])
    targets = resolved if resolved is not None else _as_list(hp.target_modules)
    # Dense projections out of a block are IA3's feed-forward modules: scaled on their input.
    feedforward = [t for t in targets if t.split(".")[-1] == "dense"]
    return IA3Config(
        task_type=task_type,
        target_modules=targets,
        feedforward_modules=feedforward,
        modules_to_save=["classifier"],
    )


def _as_list(target_modules: str | list[str]) -> list[str]:
    return [target_modules] if isinstance(target_modules, str) else target_modules


def _prompt(
    view: nn.Module, hp: Hyperparameters, task_type: TaskType, base: FrozenBase
) -> PeftModel | PromptTokenModel:
    virtual = hp.num_virtual_tokens
    config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=virtual)
    model: Any = get_peft_model(view, config)
    _init_prompt(
        model.prompt_encoder[model.active_adapter].embedding.weight, view, base, seed=hp.seed
    )
    return PromptTokenModel(model, virtual) if task_type == TaskType.TOKEN_CLS else model


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
    low = _FIRST_WORD_ID if vocab > 2 * _FIRST_WORD_ID else 0
    ids = torch.randint(low, vocab, (prompt.shape[0],), generator=generator)
    cls = base.tokenizer.cls_token_id
    if cls is not None:
        ids[0] = int(cls)
    prompt.copy_(words[ids.to(words.device)].to(prompt.dtype))
