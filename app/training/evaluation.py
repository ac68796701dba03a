"""Validation metrics per task, computed the way the service will serve the adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from app.tasks import head_task, trainable_task
from app.training.encoding import Example, batches


def primary_metric(task: str) -> str:
    """The metric the best checkpoint is chosen by."""
    return trainable_task(task).primary_metric


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    examples: list[Example],
    *,
    task: str,
    pad_id: int,
    device: torch.device,
    batch_size: int,
    pause: Callable[[], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) per batch, batches of similar lengths, with the model in eval mode;
    `pause` runs before each batch (the trainer's Ticker: it may raise to cancel)."""
    model.eval()
    out = []
    # Labels travel with their batch, so batches may follow length (less padding to compute).
    for batch in batches(
        examples,
        batch_size=batch_size,
        shuffle=False,
        seed=0,
        task=task,
        pad_id=pad_id,
        device=device,
        by_length=True,
    ):
        if pause is not None:
            pause()
        labels = batch.pop("labels")
        out.append((model(**batch).logits.float().cpu(), labels.cpu()))
    return out


def evaluate(
    model: nn.Module,
    examples: list[Example],
    *,
    task: str,
    labels: list[str],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    pause: Callable[[], None] | None = None,
) -> dict[str, float]:
    """The task's metrics over `examples`."""
    if not examples:
        return {}
    return evaluate_run(
        model,
        examples,
        task=task,
        labels=labels,
        pad_id=pad_id,
        device=device,
        batch_size=batch_size,
        pause=pause,
    ).metrics


@dataclass
class Evaluation:
    """One evaluation: the task's metrics, the mean loss, and the logits they came from."""

    metrics: dict[str, float]
    loss: float
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def evaluate_run(
    model: nn.Module,
    examples: list[Example],
    *,
    task: str,
    labels: list[str],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    pause: Callable[[], None] | None = None,
) -> Evaluation:
    """Metrics, loss and logits of `model` on `examples` (one pass for all three)."""
    pairs = predict_logits(
        model, examples, task=task, pad_id=pad_id, device=device, batch_size=batch_size, pause=pause
    )
    return Evaluation(
        metrics_from_logits(pairs, task=task, labels=labels), mean_loss(pairs, task=task), pairs
    )


def metrics_from_logits(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], *, task: str, labels: list[str]
) -> dict[str, float]:
    """Metrics from batches of (logits, gold labels)."""
    return head_task(task).metrics(pairs, labels)


def mean_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], *, task: str) -> float:
    """The task's training loss over batches of (logits, gold): what selection compares when
    accuracy moves in steps too coarse to rank checkpoints."""
    objective = head_task(task).objective
    total, count = 0.0, 0
    for logits, gold in pairs:
        value = objective.loss(logits, gold, reduction="sum")
        total, count = total + float(value), count + objective.count(gold)
    return total / max(count, 1)
