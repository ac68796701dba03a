"""k-fold cross-validation of a recipe: the sound judge when held-out rows would be a handful.

Every row is judged once, by a model that did not train on it; the out-of-fold logits of all
folds are pooled before any metric is taken, so a 96-row job compares schedules on 96 rows
rather than on the 10 a split would spare. The number of epochs (0 = the LP-FT start, which is
the probe) is the choice it makes for adapters; `auto` compares methods on the same folds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.training import evaluation
from app.training.encoding import Example
from app.training.recipe import Recipe
from app.training.selection import Rule
from app.training.split import fold_indices
from app.training.types import TrainingOutcome, TrainingReporter

Logits = tuple[torch.Tensor, torch.Tensor]
# Trains on the first examples, returns the (logits, gold) of the second.
FoldFit = Callable[[list[Example], list[Example], TrainingReporter], Logits]


@dataclass
class CvResult:
    """Out-of-fold results of one recipe."""

    folds: int
    metrics: dict[str, float]  # of the chosen epoch, over all rows
    logits: Logits | None  # out-of-fold logits of the chosen epoch, every row once; None for
    # per-token tasks, whose logits do not pool
    epochs: int | None = None  # the chosen schedule (adapters)
    curve: list[dict[str, Any]] = field(default_factory=list)  # per epoch, pooled over folds
    seconds: float = 0.0
    steps: int = 0  # optimizer steps the folds planned, for the job's progress


@dataclass
class Pending:
    """A method's estimate and the call that produces its final outcome."""

    metrics: dict[str, float]
    seconds: float
    # Trains what is left (the final adapter on all rows), reporting its steps to the reporter.
    finish: Callable[[TrainingReporter], TrainingOutcome]

    @classmethod
    def done(cls, outcome: TrainingOutcome, seconds: float = 0.0) -> Pending:
        """A run whose outcome exists already (its estimate is its validation metrics)."""
        return cls(metrics=outcome.metrics, seconds=seconds, finish=lambda _reporter: outcome)


def cv_best(cv: CvResult, *, metric: str) -> dict[str, Any]:
    """The job's `best` for a cross-validated run."""
    return {
        "epoch": cv.epochs,
        "metric": metric,
        "value": cv.metrics.get(metric),
        "criterion": f"{cv.folds}-fold cross-validation",
    }


class PhaseReporter:
    """A reporter for one part of a longer job (a fold, a candidate, the final run): its steps
    continue the job's count, in progress and in the events' `step`, so a job's log reads as
    one run; events name their fold. `last_step` is the job's step when the phase ended."""

    def __init__(
        self, inner: TrainingReporter, *, offset: int, total: int, fold: int | None = None
    ) -> None:
        self.inner, self.offset, self.total, self.fold = inner, offset, total, fold
        self.last_step = offset

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        """The job's step, of the job's total (which grows if a phase plans more)."""
        self.total = max(self.total, self.offset + total_steps)
        self.last_step = self.offset + step
        self.inner.progress(step=self.last_step, total_steps=self.total, epoch=epoch)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """The event, its step counted from the job's start, with its fold when it has one."""
        if isinstance(data.get("step"), int) and kind in ("loss", "evaluation"):
            data = {**data, "step": self.offset + data["step"]}
        self.inner.event(kind, data if self.fold is None else {**data, "fold": self.fold})


def cross_validate_adapter(
    recipe: Recipe,
    examples: list[Example],
    rows: list[dict[str, Any]],
    *,
    rule: Rule,
    reporter: TrainingReporter,
    total: int,
) -> CvResult:
    """Run the recipe's full schedule on each fold, evaluating every epoch out of fold; the
    chosen number of epochs is the best pooled primary metric (ties: the lower loss)."""
    started = time.monotonic()
    by_epoch: dict[int, list[Logits]] = {}
    histories: list[list[dict[str, Any]]] = []
    offset = 0
    folds = fold_indices(rows, recipe.plan.task, folds=rule.folds, seed=recipe.hp.seed)
    for number, held in enumerate(folds, start=1):
        train, val = _split(examples, held)
        sub = PhaseReporter(reporter, offset=offset, total=total, fold=number)
        fitted = recipe.fit(train, val, rule=rule, reporter=sub, record_logits=True)
        offset += fitted.loop.steps.run
        for epoch, pair in fitted.loop.logits_by_epoch.items():
            by_epoch.setdefault(epoch, []).append(pair)
        histories.append(list(fitted.loop.history))
        del fitted
    task = recipe.plan.task
    pooled = _pooled_curve(by_epoch, folds=len(folds), task=task, labels=recipe.plan.labels)
    # Per-token logits do not pool across rows of different lengths: average the folds' own
    # evaluations instead (token classification's F1 per fold, then the mean).
    curve = pooled or _mean_curve(histories)
    metric = evaluation.primary_metric(task)
    chosen = max(curve, key=lambda c: (_finite(c.get(metric)), -c["validation_loss"]))
    return CvResult(
        folds=len(folds),
        metrics={k: v for k, v in chosen.items() if k not in ("epoch", "validation_loss")},
        logits=_join(by_epoch[int(chosen["epoch"])]) if pooled else None,
        epochs=int(chosen["epoch"]),
        curve=curve,
        seconds=time.monotonic() - started,
        steps=offset,
    )


def cross_validate(
    fit: FoldFit,
    examples: list[Example],
    rows: list[dict[str, Any]],
    *,
    task: str,
    labels: list[str],
    folds: int,
    seed: int,
    reporter: TrainingReporter,
) -> CvResult:
    """Out-of-fold metrics of any recipe given as `fit` (a method without a schedule to pick)."""
    started = time.monotonic()
    pairs = []
    offset = 0  # the folds' steps continue one another, as in cross_validate_adapter
    for number, held in enumerate(fold_indices(rows, task, folds=folds, seed=seed), start=1):
        train, val = _split(examples, held)
        sub = PhaseReporter(reporter, offset=offset, total=offset, fold=number)
        pairs.append(fit(train, val, sub))
        offset = sub.last_step
    return CvResult(
        folds=folds,
        metrics=evaluation.metrics_from_logits(pairs, task=task, labels=labels),
        logits=_join(pairs),
        seconds=time.monotonic() - started,
    )


def _pooled_curve(
    by_epoch: dict[int, list[Logits]], *, folds: int, task: str, labels: list[str]
) -> list[dict[str, Any]]:
    """Per epoch that every fold reached: metrics over all rows' out-of-fold logits."""
    curve = []
    for epoch in sorted(e for e, pairs in by_epoch.items() if len(pairs) == folds):
        pairs = by_epoch[epoch]
        metrics = evaluation.metrics_from_logits(pairs, task=task, labels=labels)
        loss = evaluation.mean_loss(pairs, task=task)
        curve.append({"epoch": epoch, **metrics, "validation_loss": loss})
    return curve


def _mean_curve(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per epoch that every fold evaluated: the mean of the folds' numeric metrics."""
    by_epoch: dict[int, list[dict[str, Any]]] = {}
    for history in histories:
        for entry in history:
            by_epoch.setdefault(round(entry["epoch"]), []).append(entry)
    curve = []
    for epoch in sorted(e for e, entries in by_epoch.items() if len(entries) == len(histories)):
        entries = by_epoch[epoch]
        keys = [k for k, v in entries[0].items() if isinstance(v, int | float) and k != "step"]
        means = {k: sum(float(e[k]) for e in entries) / len(entries) for k in keys}
        curve.append({**means, "epoch": epoch})
    if not curve:
        raise ValueError("no epoch was evaluated on every fold")
    return curve


def _split(examples: list[Example], held: list[int]) -> tuple[list[Example], list[Example]]:
    out = set(held)
    return [e for i, e in enumerate(examples) if i not in out], [examples[i] for i in held]


def _join(pairs: list[Logits]) -> Logits:
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def _finite(value: float | None) -> float:
    return value if value is not None and value == value else float("-inf")
