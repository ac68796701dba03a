"""The trainer: PEFT on a view of the shared base, best checkpoint kept, files returned.

Runs in a job worker thread. Before every batch (training, evaluation, probe features) it checks
the cancel token and calls `pause`, which lets waiting inference requests run first, so serving
keeps a fair share of the CPU and a cancel lands within one batch (see `app.training.loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from app.base import FrozenBase
from app.tasks import Readout, get_task
from app.training import evaluation, probe
from app.training.auto import AUTO, train_auto
from app.training.calibration import calibrate
from app.training.contrastive_run import contrastive_run
from app.training.crossval import Pending, PhaseReporter, cross_validate_adapter, cv_best
from app.training.encoding import token_lengths
from app.training.generation import train_generation
from app.training.hyperparameters import fill_defaults
from app.training.loop import Pause, Steps, Ticker, save_files
from app.training.preflight import Setup, preflight
from app.training.recipe import Recipe
from app.training.selection import Rule, rule_for
from app.training.stepping import release_memory
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan, TrainingReporter


def train(
    plan: TrainingPlan,
    *,
    base: FrozenBase,
    reporter: TrainingReporter,
    cancel: CancelToken,
    max_rank: int,
    max_tokens: int,
    pause: Pause | None = None,
    checkpoint_activations: bool = False,
    micro_batch_tokens: int | None = None,
    lower_cache_mib: int = 256,
) -> TrainingOutcome:
    """Train one adapter and return the PEFT files of its best evaluation."""
    try:
        # The submit-time dry run again, on the same base: the same checks, the same targets.
        setup = preflight(plan, base=base, max_rank=max_rank, max_tokens=max_tokens)
        tick = Ticker(cancel, pause)
        if get_task(plan.task).readout is Readout.TEXT:  # causal-LM loss: its own objective
            return train_generation(
                replace(plan, method="lora") if plan.method == AUTO else plan,
                base=base,
                setup=setup,
                reporter=reporter,
                tick=tick,
                token_budget=micro_batch_tokens,
            )
        recipe_of = _recipes(
            plan, base, setup, tick,
            checkpoint_activations=checkpoint_activations, micro_batch_tokens=micro_batch_tokens,
            lower_cache_bytes=lower_cache_mib * 2**20,
        )  # fmt: skip
        if plan.method == AUTO:
            outcome = train_auto(
                plan, recipe_of=recipe_of, estimate=estimate_method, reporter=reporter
            )
        else:
            outcome = train_method(recipe_of(plan.method), reporter)
        return calibrate(outcome, task=plan.task)
    finally:
        release_memory()


def _recipes(
    plan: TrainingPlan,
    base: FrozenBase,
    setup: Setup,
    tick: Ticker,
    *,
    checkpoint_activations: bool,
    micro_batch_tokens: int | None,
    lower_cache_bytes: int,
) -> Callable[[str], Recipe]:
    """A job's recipe for each method it tries: the parsed hyperparameters filled for it."""
    lengths = token_lengths(plan.train_rows, base.tokenizer, task=plan.task)

    def recipe_of(method: str) -> Recipe:
        hp = fill_defaults(
            setup.hp,
            method=method,
            rows=len(plan.train_rows),
            lengths=lengths,
            max_tokens=setup.max_length_cap,
        )
        return Recipe(
            replace(plan, method=method),
            base,
            setup,
            hp,
            tick,
            checkpoint_activations=checkpoint_activations,
            micro_batch_tokens=micro_batch_tokens,
            lower_cache_bytes=lower_cache_bytes,
        )

    return recipe_of


def train_method(recipe: Recipe, reporter: TrainingReporter) -> TrainingOutcome:
    """One method's run under the selection rule its rows call for."""
    phase = PhaseReporter(reporter, offset=0, total=0)
    pending = estimate_method(recipe, phase, compare=False)
    return pending.finish(PhaseReporter(reporter, offset=phase.last_step, total=phase.total))


def estimate_method(recipe: Recipe, reporter: TrainingReporter, *, compare: bool) -> Pending:
    """A method's honest estimate (validation or out-of-fold metrics), and how to finish it:
    under cross-validation the final adapter on all rows is trained only when asked for, so
    `auto` pays for the winner's alone. `compare`: the estimate must be out of fold for every
    method (auto), even one that picks nothing on held-out rows (contrastive)."""
    plan, hp = recipe.plan, recipe.hp
    torch.manual_seed(hp.seed)
    rule = rule_for(plan, hp)
    reporter.event("info", {"message": rule.message, "selection": rule.as_json()})
    if plan.method == "linear_probe":
        return Pending.done(probe.train_probe(recipe, rule=rule, reporter=reporter))
    if plan.method == "contrastive":
        return contrastive_run(recipe, rule=rule, reporter=reporter, compare=compare)
    if rule.name == "cross_validation":
        return _cross_validated(recipe, rule, reporter)
    train_ex, val_ex = recipe.encode(plan.train_rows), recipe.encode(plan.validation_rows)
    fitted = recipe.fit(train_ex, val_ex, rule=rule, reporter=reporter)
    return Pending.done(recipe.outcome(fitted, selection=_selection(rule, fitted.loop.steps)))


def _cross_validated(recipe: Recipe, rule: Rule, reporter: TrainingReporter) -> Pending:
    """k folds pick the number of epochs; the final adapter then trains on every row."""
    plan, hp = recipe.plan, recipe.hp
    rows = plan.train_rows + plan.validation_rows
    examples = recipe.encode(rows)
    per_epoch = -(-len(rows) // hp.batch_size)
    total = (rule.folds + 1) * per_epoch * (hp.epochs or 1)
    cv = cross_validate_adapter(recipe, examples, rows, rule=rule, reporter=reporter, total=total)
    metric = evaluation.primary_metric(plan.task)

    def finish(final: TrainingReporter) -> TrainingOutcome:
        final.event(
            "info",
            {
                "message": f"{rule.folds}-fold cross-validation chose {cv.epochs} of {hp.epochs} "
                f"epochs (out-of-fold {metric} {cv.metrics.get(metric, float('nan')):.3f}); "
                f"training on all {len(rows)} rows"
            },
        )
        fitted = recipe.fit(examples, [], rule=rule, reporter=final, epochs=cv.epochs)
        return TrainingOutcome(
            files=save_files(fitted.model),
            metrics=cv.metrics,
            history=cv.curve,
            best=cv_best(cv, metric=metric),
            hyperparameters={**hp.model_dump(), "epochs": cv.epochs},
            validation_logits=cv.logits,
            selection={**_selection(rule, fitted.loop.steps), "chosen_epochs": cv.epochs},
        )

    return Pending(metrics=cv.metrics, seconds=cv.seconds, finish=finish)


def _selection(rule: Rule, steps: Steps) -> dict[str, Any]:
    return {
        **rule.as_json(),
        "planned_steps": steps.planned,
        "steps": steps.run,
        "stopped_early": steps.stopped_early,
    }
