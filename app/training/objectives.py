"""What a training run of one kind of task brings to the one loop (app/training/loop.py).

The loop (optimizer, schedule, micro-batches, best state, early stop, cancel, save) is the
same for every run; an `Objective` says what differs: how examples become batches, what a
batch's mean loss averages over (so micro-batches add up to the batch), and how an evaluation
is measured and ranked. Encoder tasks use `EncoderObjective`; generation has its own in
app/training/generation.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from app.base import FrozenBase
from app.training import encoding, evaluation
from app.training.hyperparameters import Hyperparameters
from app.training.selection import Rule
from app.training.stepping import Batch, label_weight
from app.training.types import TrainingPlan

Logits = tuple[torch.Tensor, torch.Tensor]
Pause = Callable[[], None]


@dataclass(frozen=True)
class Judged:
    """One evaluation as the loop ranks and records it."""

    entry: dict[str, float]  # the job's history entry, besides its step and epoch
    metrics: dict[str, float]  # what the job shows as its metrics if this one is chosen
    score: float  # the selection criterion; higher is better
    value: float  # the job's best["value"]: the objective's metric
    logits: Logits | None = None  # (logits, gold) where they pool over rows: calibration


class Objective(Protocol):
    """What one kind of task brings to the training loop."""

    @property
    def metric(self) -> str:
        """The metric the job's `best` names."""
        ...

    def batches(
        self, examples: list[Any], *, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[Batch]:
        """Padded batches with labels, on the base's device."""
        ...

    def weight(self, batch: Batch) -> int:
        """How many rows or tokens the model's mean loss on `batch` averages over."""
        ...

    def evaluate(self, model: nn.Module, examples: list[Any], *, pause: Pause) -> Judged:
        """Measure `model` on `examples`, calling `pause` before every batch."""
        ...


@dataclass(frozen=True)
class EncoderObjective:
    """Classification, regression and token classification: the task's head and loss,
    judged by the rule's criterion (the task's primary metric, or the validation loss)."""

    plan: TrainingPlan
    base: FrozenBase
    hp: Hyperparameters
    rule: Rule

    @property
    def metric(self) -> str:
        """The task's primary metric."""
        return evaluation.primary_metric(self.plan.task)

    @property
    def _pad_id(self) -> int:
        return int(self.base.tokenizer.pad_token_id or 0)

    def batches(
        self, examples: list[Any], *, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[Batch]:
        """The task's padded batches (app/training/encoding.py)."""
        return encoding.batches(
            examples,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            task=self.plan.task,
            pad_id=self._pad_id,
            device=self.base.device,
        )

    def weight(self, batch: Batch) -> int:
        """Rows, or labelled tokens for token classification."""
        return label_weight(batch)

    def evaluate(self, model: nn.Module, examples: list[Any], *, pause: Pause) -> Judged:
        """The task's metrics and loss; the score is the rule's criterion."""
        result = evaluation.evaluate_run(
            model,
            examples,
            task=self.plan.task,
            labels=self.plan.labels,
            pad_id=self._pad_id,
            device=self.base.device,
            batch_size=max(self.hp.batch_size, 64),
            pause=pause,
        )
        metrics, loss, criterion = result.metrics, result.loss, self.rule.criterion
        score = -loss if criterion == "loss" else metrics.get(criterion, -math.inf)
        if not math.isfinite(score):
            score = float("-inf")  # a constant prediction has no Pearson: never the best
        return Judged(
            entry={**metrics, "validation_loss": loss},
            metrics=metrics,
            score=score,
            value=score if criterion == self.metric else metrics.get(self.metric, math.nan),
            logits=_joined(result.pairs) if result.pairs else None,
        )


def _joined(pairs: list[Logits]) -> Logits | None:
    if pairs[0][0].dim() > 2:  # per-token logits of batches of different widths: not pooled
        return None
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
