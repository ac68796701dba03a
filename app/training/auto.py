"""`method: "auto"`: which adaptation suits this data and this budget, decided by measuring.

The textbook question of adapting a pre-trained model (extract features and fit a head, add
parameters and tune them, or reshape the embedding space contrastively) has no answer that
holds for every data set, so the job tries them: the cheap one first (a probe takes seconds),
then the others while `budget_seconds` lasts, each judged by the same sound rule (out-of-fold
with few rows, validation otherwise; app.training.selection). The best estimate wins, ties
going to the cheaper method; only the winner's final adapter is trained, and the comparison
goes into the job as `candidates`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from app.tasks import CLASSIFICATION, GENERATION
from app.training import evaluation
from app.training.crossval import Pending, PhaseReporter
from app.training.recipe import Recipe
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter

AUTO = "auto"
# Rows a class below which the few-shot specialist goes before LoRA (it is the cheaper of the
# two there, and the likelier winner: SetFit's regime).
_FEW_SHOT_PER_CLASS = 32


class Estimate(Protocol):
    """How auto gets a candidate's estimate (app.training.trainer.estimate_method)."""

    def __call__(self, recipe: Recipe, reporter: TrainingReporter, *, compare: bool) -> Pending: ...


clock = time.monotonic  # the budget's clock (tests advance their own)


def candidates_for(plan: TrainingPlan) -> list[str]:
    """The methods `auto` tries for this plan, cheapest first."""
    if plan.task == GENERATION:
        return ["lora"]
    if plan.task != CLASSIFICATION:
        return ["linear_probe", "lora"]
    per_class = (len(plan.train_rows) + len(plan.validation_rows)) / max(1, len(plan.labels))
    if per_class < _FEW_SHOT_PER_CLASS:
        return ["linear_probe", "contrastive", "lora"]
    return ["linear_probe", "lora", "contrastive"]


def train_auto(
    plan: TrainingPlan,
    *,
    recipe_of: Callable[[str], Recipe],
    estimate: Estimate,
    reporter: TrainingReporter,
) -> TrainingOutcome:
    """Try the candidates within the budget, finish the best, and list them all."""
    started = clock()
    budget = recipe_of("linear_probe").hp.budget_seconds
    metric = evaluation.primary_metric(plan.task)
    tried: list[tuple[str, Pending]] = []
    offset = 0  # the job's steps so far: each candidate's continue them
    table: list[dict[str, Any]] = []
    for method in candidates_for(plan):
        spent = clock() - started
        if tried and spent >= budget:
            table.append(
                _row(method, metric, None, 0.0, f"skipped: {spent:.0f} s of {budget:g} s spent")
            )
            continue
        reporter.event("info", {"message": f"auto: trying {method}"})
        began = clock()
        # A candidate's failure fails the job, as it would the method asked for by name: a
        # fault hidden behind the next candidate would ship a model nobody chose.
        sub = _Tagged(reporter, method, offset=offset)
        pending = estimate(recipe_of(method), sub, compare=True)
        offset = sub.last_step
        tried.append((method, pending))
        value = pending.metrics.get(metric)
        table.append(_row(method, metric, value, clock() - began, "measured"))
    if not tried:
        raise RuntimeError("auto: no candidate method could be trained")
    winner, pending = max(tried, key=lambda item: _score(item[1].metrics.get(metric)))
    reporter.event("info", {"message": f"auto: {winner} wins on {metric}; training it"})
    outcome = pending.finish(_Tagged(reporter, winner, offset=offset))
    for row in table:
        row["chosen"] = row["method"] == winner
    outcome.candidates = table
    outcome.selection = {**outcome.selection, "method": winner}
    outcome.hyperparameters = {**outcome.hyperparameters, "method": winner}
    return outcome


def _row(
    method: str, metric: str, value: float | None, seconds: float, status: str
) -> dict[str, Any]:
    return {
        "method": method,
        "metric": metric,
        "value": value,
        "seconds": round(seconds, 1),
        "status": status,
    }


def _score(value: float | None) -> float:
    # max() keeps the first of equal scores: the cheaper candidate wins a tie.
    return value if value is not None and math.isfinite(value) else float("-inf")


class _Tagged(PhaseReporter):
    """Events of a candidate's run name the candidate."""

    def __init__(self, inner: TrainingReporter, method: str, *, offset: int) -> None:
        super().__init__(inner, offset=offset, total=offset)
        self.method = method

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """The event, with the candidate it belongs to."""
        super().event(kind, {**data, "candidate": self.method})
