"""Validation metrics per task, computed the way the service will serve the adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from app.tasks import MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION
from app.tasks.classification import classification_metrics, multi_label_metrics, regression_metrics
from app.tasks.token_classification import entity_metrics
from app.training.encoding import IGNORE, Example, batches

_PRIMARY = {REGRESSION: "pearson", MULTI_LABEL: "micro_f1", TOKEN_CLASSIFICATION: "entity_f1"}


def primary_metric(task: str) -> str:
    """The metric the best checkpoint is chosen by."""
    return _PRIMARY.get(task, "accuracy")


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
    if task == TOKEN_CLASSIFICATION:
        pred_tags: list[list[str]] = []
        gold_tags: list[list[str]] = []
        for logits, gold in pairs:
            for row_logits, row_gold in zip(logits, gold, strict=True):
                keep = row_gold != IGNORE
                pred_tags.append([labels[i] for i in row_logits[keep].argmax(-1).tolist()])
                gold_tags.append([labels[i] for i in row_gold[keep].tolist()])
        return entity_metrics(pred_tags, gold_tags)
    logits = torch.cat([p[0] for p in pairs])
    gold = torch.cat([p[1] for p in pairs])
    if task == REGRESSION:
        return regression_metrics(logits[:, 0].tolist(), gold.tolist())
    if task == MULTI_LABEL:
        pred = (torch.sigmoid(logits) >= 0.5).int().numpy()
        return multi_label_metrics(pred, gold.int().numpy())
    return classification_metrics(logits.argmax(-1).tolist(), gold.tolist())


def mean_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], *, task: str) -> float:
    """The task's training loss over batches of (logits, gold): what selection compares when
    accuracy moves in steps too coarse to rank checkpoints."""
    total, count = 0.0, 0
    for logits, gold in pairs:
        if task == TOKEN_CLASSIFICATION:
            value = F.cross_entropy(
                logits.flatten(0, 1), gold.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            n = int((gold != IGNORE).sum())
        elif task == REGRESSION:
            value = F.mse_loss(logits[:, 0], gold.float(), reduction="sum")
            n = len(gold)
        elif task == MULTI_LABEL:
            value = F.binary_cross_entropy_with_logits(logits, gold.float(), reduction="sum")
            n = gold.numel()
        else:
            value = F.cross_entropy(logits, gold, reduction="sum")
            n = len(gold)
        total, count = total + float(value), count + n
    return total / max(count, 1)
