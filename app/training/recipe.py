"""One training recipe, fitted on any rows: what cross-validation repeats and the final run uses.

A `Recipe` holds what a job fixed before training (its plan, the base, the parsed and filled
hyperparameters, the resolved targets, the cancel ticker); `fit` trains an adapter of the
plan's method on the rows it is given and evaluates it on others, under a selection rule.
Folds and the final run call the same `fit`, so the schedule cross-validation measures is the
one that ships.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from app.base import FrozenBase
from app.methods import METHODS
from app.tasks import head_rows
from app.training import encoding, methods, probe
from app.training.encoding import Example, encode_rows
from app.training.hyperparameters import Hyperparameters
from app.training.loop import Ticker, TrainLoop, save_files, yielding
from app.training.lower_cache import lower_layers_skipped
from app.training.methods import AdapterModel
from app.training.pooled import PooledHeadModel, reads_pooled
from app.training.preflight import Setup
from app.training.selection import Rule
from app.training.stacking import ParentLora, attach_parent
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter
from app.training.view import build_view

Rows = list[dict[str, Any]]
Model = AdapterModel | PooledHeadModel


@dataclass
class Fitted:
    """A trained model (its chosen state loaded) and the loop that trained it."""

    model: Model
    loop: TrainLoop


@dataclass
class Recipe:
    """A job's fixed choices; `fit` applies them to some rows."""

    plan: TrainingPlan
    base: FrozenBase
    setup: Setup
    hp: Hyperparameters
    tick: Ticker
    checkpoint_activations: bool = False
    micro_batch_tokens: int | None = None
    parent: ParentLora | None = None  # a frozen LoRA the trained one stacks on
    lower_cache_bytes: int = 256 * 2**20

    def encode(self, rows: Rows) -> list[Example]:
        """Rows tokenized and labelled for the plan's task."""
        return encode_rows(
            rows,
            self.base.tokenizer,
            task=self.plan.task,
            labels=self.plan.labels,
            max_length=self.hp.max_length or 128,
        )

    def fit(
        self,
        train: list[Example],
        val: list[Example],
        *,
        rule: Rule,
        reporter: TrainingReporter,
        epochs: int | None = None,
        record_logits: bool = False,
    ) -> Fitted:
        """Train the plan's adapter on `train`, evaluating on `val` (may be empty) under `rule`;
        `epochs` overrides the schedule's length (0: the LP-FT start only)."""
        hp = self.hp.model_copy(update={"epochs": epochs}) if epochs is not None else self.hp
        torch.manual_seed(hp.seed)
        model, view = self._model(train, hp, reporter)
        loop = TrainLoop(
            self.plan,
            self.base,
            model,
            hp,
            reporter,
            self.tick,
            token_budget=self.micro_batch_tokens,
            rule=rule,
        )
        loop.record_logits = record_logits
        with self._lower_cache(view, train + val, reporter):
            state = loop.run(train, val, evaluate_start=hp.head_init == "probe")
        model.load_state_dict(state, strict=False)
        return Fitted(model, loop)

    def _model(
        self, train: list[Example], hp: Hyperparameters, reporter: TrainingReporter
    ) -> tuple[Model, PreTrainedModel]:
        plan, base = self.plan, self.base
        view = build_view(base, task=plan.task, num_labels=head_rows(plan.task, plan.labels))
        pooled = reads_pooled(base, task=plan.task, method=plan.method)
        if hp.head_init == "probe":
            reporter.event(
                "info",
                {"message": f"fitting the head on frozen features of {len(train)} rows (LP-FT)"},
            )
            with yielding(view, self.tick):
                probe.init_head(
                    view, base=base, task=plan.task, examples=train, hp=hp, pooled=pooled,
                    tick=self.tick,
                )  # fmt: skip
        model: Model = methods.wrap(
            view, plan.method, hp, plan.task, base, targets=self.setup.targets
        )
        if self.parent is not None:
            attach_parent(model, self.parent, base)
        if pooled:
            model = PooledHeadModel(model, backbone=base.prefix, task=plan.task)
        if self.checkpoint_activations and METHODS[plan.method].traits.checkpointable:
            # Keep only each layer's input and recompute the rest in the backward pass: the
            # activation peak becomes one layer's instead of all of them (bench/README.md,
            # train_contention). Non-reentrant, so frozen inputs need no requires_grad trick
            # and dropout draws are replayed exactly. Not prefix: its attention reads the
            # batch's prefixes from a router that is cleared once the forward returns.
            view.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        return model, view

    def _lower_cache(
        self, view: PreTrainedModel, examples: list[Example], reporter: TrainingReporter
    ) -> AbstractContextManager[None]:
        """Frozen lower layers computed once for the run (app/training/lower_cache.py)."""
        collate = functools.partial(
            encoding.collate,
            task=self.plan.task,
            pad_id=int(self.base.tokenizer.pad_token_id or 0),
            device=self.base.device,
        )
        return lower_layers_skipped(
            getattr(view, self.base.prefix, None) if self.base.kind == "encoder" else None,
            examples,
            targets=self.setup.targets if METHODS[self.plan.method].traits.layer_targets else None,
            collate=collate,
            max_bytes=self.lower_cache_bytes,
            tick=self.tick,
            say=lambda message: reporter.event("info", {"message": message}),
        )

    def outcome(self, fitted: Fitted, *, selection: dict[str, Any]) -> TrainingOutcome:
        """The files and records of a fitted model."""
        loop = fitted.loop
        return TrainingOutcome(
            files=save_files(fitted.model),
            metrics=loop.best_metrics,
            history=loop.history,
            best=loop.best,
            hyperparameters=self.hp.model_dump(),
            validation_logits=loop.best_logits,
            selection=selection,
        )
