"""The parts of an optimizer step that every run shares, whatever its task.

AdamW with warm-up and linear decay; micro-batches that bound the activation peak; the errors
a step turns a NaN loss or an out-of-memory into; and giving freed heap back to the OS.
The step itself is `TrainLoop._step` (app/training/loop.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import sys
from typing import Any

import torch
from torch import nn

from app.errors import SwitchyardError
from app.training.encoding import IGNORE
from app.training.hyperparameters import Hyperparameters

Batch = dict[str, torch.Tensor]
Optimizer = torch.optim.Optimizer
Scheduler = torch.optim.lr_scheduler.LambdaLR


def optimizer(model: nn.Module, hp: Hyperparameters, total: int) -> tuple[Optimizer, Scheduler]:
    """AdamW over the trainable parameters, warm-up then linear decay over `total` steps.

    PEFT's trained copy of a head (`modules_to_save`) learns at `head_learning_rate` (LP-FT);
    a run without a head (generation) has that group empty, which AdamW steps over."""
    head: list[nn.Parameter] = []
    body: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if "modules_to_save" in name else body).append(param)
    adamw = torch.optim.AdamW(
        [
            {"params": body, "lr": hp.learning_rate},
            {"params": head, "lr": hp.head_learning_rate},
        ],
        weight_decay=hp.weight_decay,
        # One multi-tensor kernel per group instead of a loop over LoRA's many small tensors.
        foreach=True,
    )
    warmup = max(1, int(hp.warmup_ratio * total))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return adamw, torch.optim.lr_scheduler.LambdaLR(adamw, schedule)


def micro_batches(batch: Batch, budget: int | None) -> list[Batch]:
    """Row slices of a padded batch with at most `budget` tokens each, cut to their own
    longest row. Activation memory grows with the tokens of a forward; on a CPU box the
    allocator keeps the peak of a step resident for the rest of the process, so the peak is
    bounded here (the arithmetic is the same: the gradients are summed)."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    if budget is None or rows * width <= budget:
        return [batch]
    step = max(1, budget // width)
    parts = []
    for start in range(0, rows, step):
        part = {k: v[start : start + step] for k, v in batch.items()}
        longest = int(part["attention_mask"].sum(dim=1).max())
        # Cut only the per-token tensors (a multi-label target may be as wide by chance), and
        # make them contiguous: the models `.view()` their labels.
        parts.append(
            {k: v[:, :longest].contiguous() if _per_token(k, v) else v for k, v in part.items()}
        )
    return parts


def _per_token(key: str, value: torch.Tensor) -> bool:
    if key == "labels":
        return value.dim() == 2 and value.dtype == torch.long  # token tags, or next tokens
    return value.dim() == 2


def label_weight(batch: Batch) -> int:
    """What an encoder batch's mean loss averages over: labelled tokens, or rows."""
    labels = batch["labels"]
    if labels.dim() == 2 and labels.dtype == torch.long:  # token classification
        return int((labels != IGNORE).sum())
    return int(labels.shape[0])


def next_token_weight(batch: Batch) -> int:
    """What a causal LM's mean loss averages over: the labelled tokens after the first
    position (the model shifts labels by one, so position 0 is never predicted)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def release_memory() -> None:
    """Give the heap's free pages back to the OS after a run. glibc keeps what a training step
    freed (here about twice its peak: +380 MiB after 40 MiniLM steps, +24 MiB once trimmed),
    and the service would otherwise hold it until it exits."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the allocator's free pages to the OS (glibc's malloc_trim). After every step too:
    between steps a job then holds about +20 MiB instead of its step's peak (+235 MiB on
    MiniLM), for no measurable time (bench/README.md, train_memory)."""
    if sys.platform.startswith("linux"):
        # Not glibc (musl, say): no malloc_trim, nothing to give back this way.
        with contextlib.suppress(OSError, AttributeError):
            _libc().malloc_trim(0)


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL("libc.so.6")


def diverged(step: int, hp: Hyperparameters) -> SwitchyardError:
    """The error of a loss that became NaN or infinite: a 400 naming the learning rate."""
    return SwitchyardError(
        400,
        "training_diverged",
        f"the loss became NaN or infinite at step {step}; lower learning_rate "
        f"(it was {hp.learning_rate:g}) or leave it unset for the default",
        param="hyperparameters.learning_rate",
    )


def out_of_memory(hp: Hyperparameters) -> SwitchyardError:
    """The error of a batch that did not fit: a 400 naming batch_size and max_length."""
    return SwitchyardError(
        400,
        "out_of_memory",
        f"a training batch did not fit in memory; lower batch_size (it was {hp.batch_size}) "
        f"or max_length (it was {hp.max_length})",
        param="hyperparameters.batch_size",
    )
