"""`method: "auto"`: which adaptation suits this data and budget, decided by measuring.

The textbook question of adapting a pre-trained model (extract features and fit a head, add
parameters and tune them, or reshape the embedding space contrastively) has no answer that
holds for every data set, so the job tries them: the cheap one first (a probe takes seconds),
then the others while `budget_seconds` lasts, each judged out of fold or on validation rows
(app.training.selection).

Estimates from a few dozen rows are coarse (16 rows: steps of 1/16, and folds that train on
half of them), so the choice follows the one-standard-error idea of model selection: the
method preferred for this regime wins unless another candidate's estimate beats it by more
than `MARGIN_SE` standard errors of the difference. The preference comes from measurement
(bench/fewshot.py): below 32 rows a class `contrastive` beat LoRA and the probe by 2 to 32
points (TREC, CR, SST-2, SMS at 8 a class), above it LoRA is the stronger; the more rows judge,
the smaller the error and the more the data decides. Only the winner's final adapter is
trained, and the comparison goes into the job as `candidates`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from app.tasks import Readout, get_task
from app.training import evaluation
from app.training.crossval import Pending, PhaseReporter
from app.training.recipe import Recipe
from app.training.selection import rule_for
from app.training.stacking import STACKED
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter

AUTO = "auto"
# Rows a class below which the few-shot specialist is the preferred candidate (SetFit's regime).
_FEW_SHOT_PER_CLASS = 32
# Standard errors of the difference a candidate must win by to overturn the preferred method.
MARGIN_SE = 2.0


class Estimate(Protocol):
    """How auto gets a candidate's estimate (app.training.trainer.estimate_method)."""

    def __call__(self, recipe: Recipe, reporter: TrainingReporter, *, compare: bool) -> Pending: ...


clock = time.monotonic  # the budget's clock (tests advance their own)


def candidates_for(plan: TrainingPlan) -> list[str]:
    """The methods `auto` tries for this plan: the probe first (seconds), then the preferred
    method for the regime (`preferred_method`), then the rest; with a `base_adapter`, LoRA on
    top of it last (it wins only by beating the preferred method, as any other must)."""
    found = _methods_for(plan)
    return [*found, STACKED] if plan.base_adapter is not None else found


def _methods_for(plan: TrainingPlan) -> list[str]:
    task = get_task(plan.task)
    if task.readout is Readout.TEXT:  # lora, the one generation method auto tries
        return ["lora"]
    if not task.single_label:  # contrastive pairs need one label a row
        return ["linear_probe", "lora"]
    if preferred_method(plan) == "contrastive":
        return ["linear_probe", "contrastive", "lora"]
    # Past the few-shot regime contrastive pairs cost the most (SST-2, 400 rows: 693 s for
    # its two folds against LoRA's 127 s) for an estimate that did not win: LoRA's turf.
    return ["linear_probe", "lora"]


def preferred_method(plan: TrainingPlan) -> str:
    """What wins unless the measurements clearly say otherwise."""
    rows = len(plan.train_rows) + len(plan.validation_rows)
    few = rows / max(1, len(plan.labels)) < _FEW_SHOT_PER_CLASS
    return "contrastive" if get_task(plan.task).single_label and few else "lora"


def choose(
    measured: list[tuple[str, float]], *, preferred: str, judged_rows: int
) -> tuple[str, str]:
    """The winner among (method, estimate) pairs, and why. The preferred method (else the
    first measured) stands unless the best other estimate beats it by more than `MARGIN_SE`
    standard errors of the difference of two proportions over `judged_rows` rows."""
    scores = {m: v for m, v in measured if math.isfinite(v)}
    if not scores:
        return measured[0][0], "no candidate has a finite estimate: the first one"
    incumbent = preferred if preferred in scores else next(iter(scores))
    challenger = max(scores, key=lambda m: scores[m])  # max keeps the first (cheaper) of ties
    gap = scores[challenger] - scores[incumbent]
    p, q = (min(1.0, max(0.0, scores[m])) for m in (incumbent, challenger))
    error = math.sqrt((p * (1 - p) + q * (1 - q)) / max(1, judged_rows))
    if challenger != incumbent and gap > MARGIN_SE * error:
        return challenger, f"beats {incumbent} by {gap:.3f} > {MARGIN_SE:g} x {error:.3f}"
    if challenger != incumbent:
        return incumbent, f"preferred; {challenger}'s lead {gap:.3f} <= {MARGIN_SE:g} x {error:.3f}"
    return incumbent, "the best estimate"


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
    winner, why = choose(
        [(m, _score(p.metrics.get(metric))) for m, p in tried],
        preferred=preferred_method(plan),
        judged_rows=_judged_rows(plan, recipe_of("linear_probe")),
    )
    pending = dict(tried)[winner]
    reporter.event("info", {"message": f"auto: {winner} on {metric} ({why}); training it"})
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
    return value if value is not None and math.isfinite(value) else float("-inf")


def _judged_rows(plan: TrainingPlan, recipe: Recipe) -> int:
    """How many rows the estimates were measured on: every row out of fold, or validation."""
    rule = rule_for(plan, recipe.hp)
    if rule.name == "cross_validation":
        return len(plan.train_rows) + len(plan.validation_rows)
    return max(1, len(plan.validation_rows))


class _Tagged(PhaseReporter):
    """Events of a candidate's run name the candidate."""

    def __init__(self, inner: TrainingReporter, method: str, *, offset: int) -> None:
        super().__init__(inner, offset=offset, total=offset)
        self.method = method

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """The event, with the candidate it belongs to."""
        super().event(kind, {**data, "candidate": self.method})
