"""The trainer's set-up as a dry run: everything a user's value can break, found at submission.

The job manager runs `preflight` when a job is created, on the real base, so a job that could
only fail on its own values is a 400 naming the field instead of a 202 that later fails; the
trainer runs the very same function first, so the two can never disagree. Nothing is built:
target modules are matched on the base's module names (app/training/targets.py), the head and
layer counts come from the base's config, and the hyperparameters' ranges from their schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.base import FrozenBase
from app.errors import bad_request
from app.methods import METHODS
from app.tasks import LANGUAGE_MODELING, check_base
from app.training.hyperparameters import Hyperparameters, parse_hyperparameters
from app.training.targets import resolve_targets, upper_targets
from app.training.types import TrainingPlan
from app.untrusted import check_tree

_MIN_TEXT_TOKENS = 8  # the schema's least max_length


@dataclass(frozen=True)
class Setup:
    """What the trainer starts from: the user's hyperparameters parsed (defaults still
    unset), the resolved target modules, and the longest max_length this base can take."""

    hp: Hyperparameters
    targets: list[str] | None  # view module names for lora / ia3; None: the method's default
    max_length_cap: int


def preflight(plan: TrainingPlan, *, base: FrozenBase, max_rank: int, max_tokens: int) -> Setup:
    """Check a plan against the base the way the trainer will use it; a 400 names the field."""
    check_tree(plan.hyperparameters, param="hyperparameters")
    _check_task_and_method(base, plan.task, plan.method)
    hp = parse_hyperparameters(plan.hyperparameters, max_rank=max_rank, max_tokens=max_tokens)
    cap = _length_cap(base, plan.method, hp, max_tokens)
    if hp.max_length is not None and hp.max_length > cap:
        beside = (
            f" beside {hp.num_virtual_tokens} virtual tokens"
            if METHODS[plan.method].traits.virtual_positions
            else ""
        )
        raise bad_request(
            "invalid_hyperparameter",
            f"max_length {hp.max_length} > {cap}, the most this base takes{beside}",
            param="hyperparameters.max_length",
        )
    if "layers" in hp.model_fields_set:
        _check_layers(hp.layers, base)
    targets = None
    if "target_modules" in hp.model_fields_set:  # checked for every method: a typo is a typo
        targets = resolve_targets(base, hp.target_modules)
    if plan.task == LANGUAGE_MODELING:
        from app.training.language_modeling import check_language_plan  # imports preflight

        check_language_plan(plan, base, hp, cap=cap)
    if hp.upper_layers is not None and METHODS[plan.method].traits.layer_targets:
        targets = upper_targets(base, targets, hp.upper_layers)
    return Setup(hp=hp, targets=targets, max_length_cap=cap)


def _check_task_and_method(base: FrozenBase, task: str, method: str) -> None:
    found = check_base(task, base.kind)
    if found.methods is not None and method not in found.methods:
        raise bad_request(
            "unsupported_method",
            f"method {method!r} cannot train task {found.name}; use one of {list(found.methods)}",
            param="method",
        )
    if method not in METHODS:  # planning refuses it first; a plan built by hand as well
        raise bad_request(
            "invalid_method", f"method {method!r} is not one of {list(METHODS)}", param="method"
        )
    traits = METHODS[method].traits
    if traits.tasks is not None and task not in traits.tasks:
        raise bad_request(
            "unsupported_task",
            f"method {method!r} trains {traits.tasks_note}; "
            f"task {task!r} needs another method, such as 'lora' or 'linear_probe'",
            param="task",
        )


def _length_cap(base: FrozenBase, method: str, hp: Hyperparameters, max_tokens: int) -> int:
    """max_input_tokens, or fewer where the base has fewer positions: prompt tuning puts its
    virtual tokens in front of the text, so they take positions too."""
    positions = getattr(base.config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return max_tokens
    virtual = hp.num_virtual_tokens if METHODS[method].traits.virtual_positions else 0
    if positions - virtual < _MIN_TEXT_TOKENS:
        raise bad_request(
            "invalid_hyperparameter",
            f"num_virtual_tokens {virtual} + {_MIN_TEXT_TOKENS} text tokens > the base's "
            f"{positions} positions",
            param="hyperparameters.num_virtual_tokens",
        )
    return min(max_tokens, positions - virtual)


def _check_layers(layers: list[int], base: FrozenBase) -> None:
    """Hidden-state indices: 0 is the embeddings, 1..L the layers, negatives count back."""
    states = base.num_layers + 1
    bad = [layer for layer in layers if not -states <= layer < states]
    if bad:
        raise bad_request(
            "invalid_hyperparameter",
            f"layers {bad[:4]} out of range: this base has {states} hidden states "
            f"(embeddings and {base.num_layers} layers), so layers lie in "
            f"[{-states}, {states - 1}]",
            param="hyperparameters.layers",
        )
