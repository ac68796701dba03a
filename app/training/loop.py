"""The one training loop: AdamW with warm-up and linear decay, micro-batches, evaluations, best
state, early stop, for encoder and decoder tasks alike. What differs between tasks (their
batches, loss weights and evaluation) comes from an `Objective` (app/training/objectives.py).

Everything slow in a run (a step, an evaluation batch, a feature batch of the LP-FT probe)
goes through a `Ticker` first, which raises on cancel and lets queued inference run, so a
cancel takes effect within one batch and serving keeps its share of the CPU.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from app.base import FrozenBase
from app.training import evaluation, precision, stepping
from app.training.hyperparameters import Hyperparameters
from app.training.objectives import EncoderObjective, Objective
from app.training.selection import Rule

# Looked up in this module at every step, so that a test can count their calls.
from app.training.stepping import Batch, micro_batches, trim_heap
from app.training.types import CancelToken, TrainingCancelled, TrainingPlan, TrainingReporter

Pause = Callable[[], None]
State = dict[str, torch.Tensor]


@dataclass
class Ticker:
    """Called before each unit of work: raises when cancelled, else yields to requests."""

    cancel: CancelToken
    pause: Pause | None = None

    def __call__(self) -> None:
        if self.cancel.cancelled:
            raise TrainingCancelled(self.cancel.reason)
        if self.pause is not None:
            self.pause()


@dataclass
class Schedule:
    """How many steps a run takes and when it evaluates."""

    per_epoch: int
    total: int
    eval_every: int

    @classmethod
    def of(cls, rows: int, hp: Hyperparameters) -> Schedule:
        """From the training rows and the (filled) hyperparameters."""
        per_epoch = max(1, math.ceil(rows / hp.batch_size))
        # epochs 0 is cross-validation's verdict that the LP-FT start is best: no step.
        total = per_epoch * (1 if hp.epochs is None else hp.epochs)
        if hp.max_steps:
            total = min(total, hp.max_steps)
        return cls(per_epoch, total, hp.eval_every_steps or per_epoch)


@contextmanager
def yielding(model: nn.Module, tick: Ticker) -> Iterator[None]:
    """Tick before every linear layer of `model` and pause before its gradient, for the time
    inside the block. A training step here takes a second or more on a busy CPU; yielding only
    between steps would make a request wait for most of one. Between layers it waits a few
    milliseconds: the time of one matrix product."""
    handles = []

    def before(_module: nn.Module, _args: Any) -> None:
        tick()

    def after(_module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad and tick.pause is not None:
            output.register_hook(_pause_hook(tick.pause))

    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pause_hook(pause: Pause) -> Callable[[torch.Tensor], None]:
    def hook(_grad: torch.Tensor) -> None:
        pause()  # in the backward pass: only yield; a cancel is seen at the next forward

    return hook


class TrainLoop:
    """One run over an adapter model; `run` returns the trainable state of the best evaluation.

    `objective` brings what the task decides (batches, loss weights, evaluation); without one
    the run is an encoder task's (`EncoderObjective` of the plan), judged under `rule`."""

    def __init__(
        self,
        plan: TrainingPlan,
        base: FrozenBase,
        model: nn.Module,
        hp: Hyperparameters,
        reporter: TrainingReporter,
        tick: Ticker,
        *,
        token_budget: int | None = None,
        rule: Rule | None = None,
        objective: Objective | None = None,
    ) -> None:
        self.model, self.hp, self.reporter, self.tick = model, hp, reporter, tick
        self.base = base
        self.rule = rule or Rule(
            "validation_metric", criterion=evaluation.primary_metric(plan.task), early_stop=True
        )
        self.objective = objective or EncoderObjective(plan, base, hp, self.rule)
        self.metric = self.objective.metric
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.best_metrics: dict[str, float] = {}
        # The chosen evaluation's (logits, gold): what calibration is fitted on.
        self.best_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self.steps = Steps()
        # Cross-validation pools each epoch's out-of-fold logits over the folds.
        self.record_logits = False
        self.logits_by_epoch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Micro-batches bound the activation peak (bench/README.md, train_memory); their
        # weighted gradients add up to the whole batch's, only dropout draws differ. Opt-in
        # (Settings.train_micro_batch_tokens): those draws moved the SST-2 acceptance run.
        self.token_budget = token_budget
        self._best_score = -math.inf
        self._stale = 0
        self._per_epoch = 1

    def run(self, train: list[Any], val: list[Any], *, evaluate_start: bool) -> State:
        """Train; `evaluate_start` makes the untrained model (an LP-FT probe head) a candidate,
        so that fine-tuning that only hurts falls back to the probe instead of shipping worse."""
        with yielding(self.model, self.tick):
            return self._run(train, val, evaluate_start=evaluate_start)

    def _run(self, train: list[Any], val: list[Any], *, evaluate_start: bool) -> State:
        plan = Schedule.of(len(train), self.hp)
        self.steps = Steps(planned=plan.total)
        self._per_epoch = plan.per_epoch
        optimizer, scheduler = stepping.optimizer(self.model, self.hp, plan.total)
        best_state = self._trainable_state()
        if evaluate_start:
            self._evaluate(val, step=0, epoch=0.0)
        for step, batch in enumerate(self._batches(train, plan), start=1):
            self.tick()
            loss = self._step(batch, optimizer, scheduler, step)
            self.steps.run = step
            self._report(step, plan, loss=loss, lr=float(scheduler.get_last_lr()[0]))
            if step % plan.eval_every == 0 or step == plan.total:
                if self._evaluate(val, step=step, epoch=step / plan.per_epoch):
                    best_state = self._trainable_state()
                if step < plan.total and self._should_stop(step):
                    return best_state
            if step >= plan.total:
                break
        return best_state

    def _batches(self, train: list[Any], plan: Schedule) -> Iterator[Batch]:
        """The epochs' shuffled batches, each epoch drawn with its own seed."""
        for epoch in range(math.ceil(plan.total / plan.per_epoch)):
            yield from self.objective.batches(
                train, batch_size=self.hp.batch_size, shuffle=True, seed=self.hp.seed + epoch
            )

    def _report(self, step: int, plan: Schedule, *, loss: float, lr: float) -> None:
        self.reporter.progress(step=step, total_steps=plan.total, epoch=step / plan.per_epoch)
        if step % self.hp.log_every_steps == 0 or step == 1:
            self.reporter.event("loss", {"step": step, "loss": loss, "lr": lr})

    def _should_stop(self, step: int) -> bool:
        patience = self.hp.early_stopping_patience
        if not self.rule.early_stop or step / self._per_epoch < self.rule.min_epochs:
            return False
        if patience and self._stale >= patience:
            self.steps.stopped_early = True
            self.reporter.event(
                "info",
                {
                    "message": f"early stop at step {step} of {self.steps.planned}: {patience} "
                    f"evaluations without a better {self._criterion_name}"
                },
            )
            return True
        return False

    @property
    def _criterion_name(self) -> str:
        return "validation loss" if self.rule.criterion == "loss" else self.rule.criterion

    def _step(
        self,
        batch: Batch,
        optimizer: stepping.Optimizer,
        scheduler: stepping.Scheduler,
        step: int,
    ) -> float:
        """One optimizer step over the batch, in micro-batches of at most `token_budget`
        tokens whose gradients add up to the whole batch's (each loss weighted by its share of
        the batch's labelled rows or tokens)."""
        self.model.train()
        parts = [
            (part, self.objective.weight(part)) for part in micro_batches(batch, self.token_budget)
        ]
        total = sum(weight for _part, weight in parts) or 1
        loss_sum = 0.0
        try:
            for part, weight in parts:
                if weight == 0:
                    continue  # no labelled token in it: nothing to learn, and a NaN mean
                with precision.autocast(self.base):
                    loss = self.model(**part).loss
                if not torch.isfinite(loss):
                    raise stepping.diverged(step, self.hp)
                (loss * (weight / total)).backward()
                loss_sum += float(loss.detach()) * weight / total
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise stepping.out_of_memory(self.hp) from exc
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], max_norm=1.0
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        trim_heap()
        return loss_sum

    def _evaluate(self, val: list[Any], *, step: int, epoch: float) -> bool:
        """Evaluate, log, and keep the best; True when this evaluation is the new best."""
        if not val:
            return self.rule.keep_last
        with precision.autocast(self.base):
            judged = self.objective.evaluate(self.model, val, pause=self.tick)
        entry = {"step": step, "epoch": round(epoch, 3), **judged.entry}
        self.history.append(entry)
        if self.record_logits and judged.logits is not None:
            self.logits_by_epoch[round(epoch)] = judged.logits
        self.reporter.event("evaluation", entry)
        if self.best and judged.score <= self._best_score and not self.rule.keep_last:
            self._stale += 1
            return False
        self.best = {"step": step, "epoch": round(epoch, 3), "metric": self.metric}
        self.best["value"] = judged.value
        if self.rule.criterion != self.metric:  # the value is the metric's; say what chose it
            self.best["criterion"] = self._criterion_name
        self.best_metrics, self.best_logits = judged.metrics, judged.logits
        self._best_score, self._stale = judged.score, 0
        return True

    def _trainable_state(self) -> State:
        return {
            name: copy.deepcopy(param.detach())
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }


@dataclass
class Steps:
    """How far a run went: the steps planned, the steps run, and whether it stopped early."""

    planned: int = 0
    run: int = 0
    stopped_early: bool = False


class Savable(Protocol):
    """A trained adapter model that writes PEFT's files (a PeftModel, a pooled head)."""

    def save_pretrained(self, save_directory: str) -> None:
        """Write the adapter's files into `save_directory`."""
        ...


def save_files(model: Savable) -> dict[str, bytes]:
    """The PEFT files `model.save_pretrained` writes, read back into memory: what a run
    returns to be registered, for every task and method."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
