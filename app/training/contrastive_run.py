"""`contrastive` under the job's selection rule: a direct run, or k folds for an honest estimate.

Contrastive training picks nothing on validation rows (its pairs, epochs and head strength come
from the training rows), so with few rows it trains on all of them; the folds only measure
it, out of fold, so that its metrics (and `auto`'s comparison) are not the training rows'.
"""

from __future__ import annotations

import time

from app.training import evaluation
from app.training.contrastive import contrastive_adapter
from app.training.crossval import Logits, Pending, cross_validate, cv_best
from app.training.encoding import Example
from app.training.recipe import Recipe
from app.training.selection import Rule
from app.training.types import TrainingOutcome, TrainingReporter


def contrastive_run(
    recipe: Recipe, *, rule: Rule, reporter: TrainingReporter, compare: bool
) -> Pending:
    """The contrastive adapter's estimate, and its final run on all rows when asked for.

    Asked for by name (`compare` False) with few rows, it trains once, on every row: nothing
    is chosen on held-out rows, and its metrics are its head's out-of-fold scores over the
    adapted features. Compared with other methods by `auto`, it is cross-validated like
    them, so that no candidate is judged on rows it learned from."""
    plan = recipe.plan
    selection = {**rule.as_json(), "stopped_early": False}
    if rule.name != "cross_validation":
        train, val = recipe.encode(plan.train_rows), recipe.encode(plan.validation_rows)
        return _once(recipe, train, val, reporter, selection=selection)
    rows = plan.train_rows + plan.validation_rows
    examples = recipe.encode(rows)
    if not compare:
        fixed = {**selection, "rule": "fixed", "trained_on": "all rows"}
        criterion = "head cross-validation on the adapted features"
        return _once(recipe, examples, [], reporter, selection=fixed, criterion=criterion)

    def fold(train: list[Example], val: list[Example], sub: TrainingReporter) -> Logits:
        logits = _run(recipe, train, val, sub).validation_logits
        assert logits is not None  # a classification run always has them
        return logits

    cv = cross_validate(
        fold,
        examples,
        rows,
        task=plan.task,
        labels=plan.labels,
        folds=rule.folds,
        seed=recipe.hp.seed,
        reporter=reporter,
    )

    def finish(final: TrainingReporter) -> TrainingOutcome:
        outcome = _run(recipe, examples, examples, final)  # its metrics: training rows'
        outcome.metrics, outcome.validation_logits = cv.metrics, cv.logits
        outcome.best = cv_best(cv, metric=evaluation.primary_metric(plan.task))
        outcome.history = [{"folds": cv.folds, **cv.metrics}]
        outcome.selection = selection
        return outcome

    return Pending(metrics=cv.metrics, seconds=cv.seconds, finish=finish)


def _run(
    recipe: Recipe, train: list[Example], val: list[Example], reporter: TrainingReporter
) -> TrainingOutcome:
    return contrastive_adapter(
        recipe.plan,
        base=recipe.base,
        hp=recipe.hp,
        train=train,
        val=val,
        reporter=reporter,
        tick=recipe.tick,
        targets=recipe.setup.targets,
    )


def _once(
    recipe: Recipe,
    train: list[Example],
    val: list[Example],
    reporter: TrainingReporter,
    *,
    selection: dict[str, object],
    criterion: str | None = None,
) -> Pending:
    """One run, already finished: its estimate is its own validation (or head) metrics."""
    started = time.monotonic()
    outcome = _run(recipe, train, val, reporter)
    outcome.selection = dict(selection)
    if criterion is not None:
        outcome.best["criterion"] = criterion
    return Pending.done(outcome, seconds=time.monotonic() - started)
