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
from app.errors import bad_request
from app.registry.records import AdapterRef
from app.tasks import LANGUAGE_MODELING, Readout, get_task
from app.training import evaluation, probe
from app.training.auto import AUTO, train_auto
from app.training.calibration import calibrate
from app.training.contrastive_run import contrastive_run
from app.training.crossval import Pending, PhaseReporter, cross_validate_adapter, cv_best
from app.training.encoding import token_lengths
from app.training.generation import train_generation
from app.training.hyperparameters import fill_defaults
from app.training.language_modeling import train_language_modeling
from app.training.loop import Pause, Steps, Ticker, save_files
from app.training.preflight import Setup, preflight
from app.training.recipe import Recipe
from app.training.selection import Rule, rule_for
from app.training.stacking import STACKED, ParentLora, stacked
from app.training.stepping import release_memory
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan, TrainingReporter

ParentLoader = Callable[[AdapterRef], ParentLora]


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
    parents: ParentLoader | None = None,
    lower_cache_mib: int = 256,
) -> TrainingOutcome:
    """Train one adapter and return the PEFT files of its best evaluation. `parents` loads
    a plan's `base_adapter` (the registry's, bound by the app)."""
    try:
        # The submit-time dry run again, on the same base: the same checks, the same targets.
        setup = preflight(plan, base=base, max_rank=max_rank, max_tokens=max_tokens)
        tick = Ticker(cancel, pause)
        if plan.task == LANGUAGE_MODELING:  # lazy corpus, MLM or causal LM: its own run
            return train_language_modeling(
                plan, base=base, setup=setup, reporter=reporter, tick=tick,
                token_budget=micro_batch_tokens,
            )  # fmt: skip
        parent = _parent(plan, parents)
        if get_task(plan.task).readout is Readout.TEXT:  # causal-LM loss: its own objective
            return _generation(
                plan, base=base, setup=setup, reporter=reporter, tick=tick, parent=parent,
                token_budget=micro_batch_tokens,
            )  # fmt: skip
        recipe_of = _recipes(
            plan, base, setup, tick, parent=parent,
            checkpoint_activations=checkpoint_activations, micro_batch_tokens=micro_batch_tokens,
            lower_cache_bytes=lower_cache_mib * 2**20,
        )  # fmt: skip
        if plan.method == AUTO:
            outcome = train_auto(
                plan, recipe_of=recipe_of, estimate=estimate_method, reporter=reporter
            )
            outcome = _auto_stack(outcome, parent, base=base, task=plan.task)
        else:

            def method(on: ParentLora | None, phase: TrainingReporter) -> TrainingOutcome:
                return train_method(replace(recipe_of(plan.method), parent=on), phase)

            outcome = _with_effect(method, parent, base=base, plan=plan, reporter=reporter)
        return calibrate(outcome, task=plan.task)
    finally:
        release_memory()


def _generation(
    plan: TrainingPlan,
    *,
    base: FrozenBase,
    setup: Setup,
    reporter: TrainingReporter,
    tick: Ticker,
    parent: ParentLora | None,
    token_budget: int | None,
) -> TrainingOutcome:
    """A generation adapter (LoRA under auto), on top of the base_adapter when there is one."""
    plan = replace(plan, method="lora") if plan.method == AUTO else plan

    def generate(on: ParentLora | None, phase: TrainingReporter) -> TrainingOutcome:
        return train_generation(
            plan, base=base, setup=setup, reporter=phase, tick=tick,
            token_budget=token_budget, parent=on,
        )  # fmt: skip

    return _with_effect(generate, parent, base=base, plan=plan, reporter=reporter)


def _parent(plan: TrainingPlan, parents: ParentLoader | None) -> ParentLora | None:
    if plan.base_adapter is None:
        return None
    if parents is None:
        raise bad_request(
            "unsupported_base_adapter",
            "this trainer cannot load base_adapter",
            param="base_adapter",
        )
    return parents(plan.base_adapter)


StackRun = Callable[[ParentLora | None, TrainingReporter], TrainingOutcome]


def _with_effect(
    run: StackRun,
    parent: ParentLora | None,
    *,
    base: FrozenBase,
    plan: TrainingPlan,
    reporter: TrainingReporter,
) -> TrainingOutcome:
    """One run; with a `base_adapter`, first the same recipe without it on the same rows
    (the baseline of `domain_effect`), then the kept run on top of it."""
    if parent is None:
        return run(None, reporter)
    metric = evaluation.primary_metric(plan.task)
    name, version = parent.ref
    reporter.event(
        "info",
        {"message": f"base_adapter {name} v{version}: training without it first (the "
         f"baseline of domain_effect), then on top of it, on the same rows"},
    )  # fmt: skip
    first = PhaseReporter(reporter, offset=0, total=0)
    without = run(None, first).metrics.get(metric)
    release_memory()
    kept = run(parent, PhaseReporter(reporter, offset=first.last_step, total=first.total))
    return stacked(kept, parent, base, metric=metric, without=without)


def _auto_stack(
    outcome: TrainingOutcome, parent: ParentLora | None, *, base: FrozenBase, task: str
) -> TrainingOutcome:
    """Auto's result when the job has a base_adapter: folded in only when the stack won;
    either way the candidates show it and the effect is measured against plain LoRA."""
    if parent is None:
        return outcome
    values = {row["method"]: row.get("value") for row in outcome.candidates or []}
    for row in outcome.candidates or []:
        if row["method"] == STACKED:
            row["base_adapter"] = {"adapter": parent.ref.name, "version": parent.ref.version}
    metric = evaluation.primary_metric(task)
    if outcome.selection.get("method") != STACKED:
        effect = {"with": values.get(STACKED), "without": values.get("lora"), "metric": metric}
        outcome.domain_effect = {**effect, "chosen": False}
        return outcome
    outcome = stacked(outcome, parent, base, metric=metric, without=values.get("lora"))
    outcome.hyperparameters = {**outcome.hyperparameters, "method": "lora"}
    return outcome


def _recipes(
    plan: TrainingPlan,
    base: FrozenBase,
    setup: Setup,
    tick: Ticker,
    *,
    parent: ParentLora | None,
    checkpoint_activations: bool,
    micro_batch_tokens: int | None,
    lower_cache_bytes: int,
) -> Callable[[str], Recipe]:
    """A job's recipe for each method it tries: the parsed hyperparameters filled for it;
    `STACKED` is LoRA on top of the job's base_adapter (auto's extra candidate)."""
    lengths = token_lengths(plan.train_rows, base.tokenizer, task=plan.task)

    def recipe_of(candidate: str) -> Recipe:
        method = "lora" if candidate == STACKED else candidate
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
            parent=parent if candidate == STACKED else None,
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
