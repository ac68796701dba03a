"""The trainable adapter of each method, wrapped around the training view.

Each method's own module (app/methods/) says how: LoRA, IA3 and prompt tuning are PEFT's own
models (so their files are PEFT's); prefix tuning is ours (see `app.training.prefix`). Each
keeps the head under PEFT's `modules_to_save` name, which is how the trainer tells head
parameters (higher learning rate) from the adapter's.
"""

from __future__ import annotations

from peft import PeftModel
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.methods import METHODS
from app.methods.base import Wrapping
from app.methods.prompt import PromptTokenModel
from app.training.hyperparameters import Hyperparameters
from app.training.prefix import PrefixModel

__all__ = ["AdapterModel", "PromptTokenModel", "wrap"]

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
    entry = METHODS.get(method)
    if entry is None or entry.trainer is None:
        raise bad_request(
            "unsupported_method",
            f"method {method!r} cannot be trained on this base",
            param="method",
        )
    model = entry.trainer.wrap(Wrapping(view=view, hp=hp, task=task, base=base, targets=targets))
    if not isinstance(model, PeftModel | PrefixModel | PromptTokenModel):
        raise TypeError(f"method {method!r} wrapped the view as {type(model).__name__}")
    return model
