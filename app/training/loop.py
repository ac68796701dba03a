"""The training loop: AdamW with warm-up and linear decay, evaluations, best state, early stop.

Everything slow in a run (a step, an evaluation batch, a feature batch of the LP-FT probe)
goes through a `Ticker` first, which raises on cancel and lets queued inference run, so a
cancel takes effect within one batch and serving keeps its share of the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import gc
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.training import evaluation
from app.training.encoding import IGNORE, Example, batches
from app.training.hyperparameters import Hyperparameters
from app.training.selection import Rule
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
    """One run over an adapter model; `run` returns the trainable state of the best evaluation."""

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
    ) -> None:
        self.plan, self.base, self.model, self.hp = plan, base, model, hp
        self.reporter, self.tick = reporter, tick
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.best_metrics: dict[str, float] = {}
        # The chosen evaluation's (logits, gold): what calibration is fitted on.
        self.best_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self.metric = evaluation.primary_metric(plan.task)
        self.rule = rule or Rule("validation_metric", criterion=self.metric, early_stop=True)
        self.steps = Steps()
        # Cross-validation pools each epoch's out-of-fold logits over the folds.
        self.record_logits = False
        self.logits_by_epoch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pad_id = int(base.tokenizer.pad_token_id or 0)
        # Micro-batches bound the activation peak (bench/README.md, train_memory); their
        # weighted gradients add up to the whole batch's, only dropout draws differ. Opt-in
        # (Settings.train_micro_batch_tokens): those draws moved the SST-2 acceptance run.
        self.token_budget = token_budget
        self._stale = 0
        self._per_epoch = 1

    def run(self, train: list[Example], val: list[Example], *, evaluate_start: bool) -> State:
        """Train; `evaluate_start` makes the untrained model (an LP-FT probe head) a candidate,
        so that fine-tuning that only hurts falls back to the probe instead of shipping worse."""
        plan = Schedule.of(len(train), self.hp)
        self.steps = Steps(planned=plan.total)
        self._per_epoch = plan.per_epoch
        optimizer, scheduler = self._optimizer(plan.total)
        best_state = self._trainable_state()
        if evaluate_start:
            self._evaluate(val, step=0, epoch=0.0)
        step = 0
        for epoch in range(math.ceil(plan.total / plan.per_epoch)):
            for batch in batches(
                train,
                batch_size=self.hp.batch_size,
                shuffle=True,
                seed=self.hp.seed + epoch,
                task=self.plan.task,
                pad_id=self.pad_id,
                device=self.base.device,
            ):
                self.tick()
                loss = self._step(batch, optimizer, scheduler, step + 1)
                step += 1
                self.steps.run = step
                self.reporter.progress(
                    step=step, total_steps=plan.total, epoch=step / plan.per_epoch
                )
                if step % self.hp.log_every_steps == 0 or step == 1:
                    self.reporter.event(
                        "loss", {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0]}
                    )
                if step % plan.eval_every == 0 or step == plan.total:
                    if self._evaluate(val, step=step, epoch=step / plan.per_epoch):
                        best_state = self._trainable_state()
                    if step < plan.total and self._should_stop(step):
                        return best_state
                if step >= plan.total:
                    return best_state
        return best_state

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

    def _optimizer(
        self, total: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        head: list[nn.Parameter] = []
        body: list[nn.Parameter] = []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                # PEFT's name for a trained copy of the head; it learns faster (LP-FT).
                (head if "modules_to_save" in name else body).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": body, "lr": self.hp.learning_rate},
                {"params": head, "lr": self.hp.head_learning_rate},
            ],
            weight_decay=self.hp.weight_decay,
        )
        warmup = max(1, int(self.hp.warmup_ratio * total))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def _step(
        self,
        batch: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        step: int,
    ) -> float:
        """One optimizer step over the batch, in micro-batches of at most `token_budget`
        tokens whose gradients add up to the whole batch's (each loss weighted by its share of
        the batch's labelled rows or tokens)."""
        self.model.train()
        parts = [(part, _weight(part)) for part in micro_batches(batch, self.token_budget)]
        total = sum(weight for _part, weight in parts) or 1
        loss_sum = 0.0
        try:
            for part, weight in parts:
                if weight == 0:
                    continue  # no labelled token in it: nothing to learn, and a NaN mean
                loss = self.model(**part).loss
                if not torch.isfinite(loss):
                    raise _diverged(step, self.hp)
                (loss * (weight / total)).backward()
                loss_sum += float(loss.detach()) * weight / total
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise _out_of_memory(self.hp) from exc
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], max_norm=1.0
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        trim_heap()
        return loss_sum

    def _evaluate(self, val: list[Example], *, step: int, epoch: float) -> bool:
        """Evaluate, log, and keep the best; True when this evaluation is the new best."""
        if not val:
            return self.rule.keep_last
        result = evaluation.evaluate_run(
            self.model,
            val,
            task=self.plan.task,
            labels=self.plan.labels,
            pad_id=self.pad_id,
            device=self.base.device,
            batch_size=max(self.hp.batch_size, 64),
            pause=self.tick,
        )
        metrics, loss, pairs = result.metrics, result.loss, result.pairs
        entry = {"step": step, "epoch": round(epoch, 3), **metrics, "validation_loss": loss}
        self.history.append(entry)
        joined = _joined(pairs) if pairs else None
        if self.record_logits and joined is not None:
            self.logits_by_epoch[round(epoch)] = joined
        self.reporter.event("evaluation", entry)
        value = (
            -loss if self.rule.criterion == "loss" else metrics.get(self.rule.criterion, -math.inf)
        )
        if not math.isfinite(value):
            value = float("-inf")  # a constant prediction has no Pearson: never the best
        if self.best and value <= self.best["value"] and not self.rule.keep_last:
            self._stale += 1
            return False
        self.best = {"step": step, "epoch": round(epoch, 3), "metric": self.metric, "value": value}
        if self.rule.criterion != self.metric:  # the value is the criterion's; show the metric
            self.best["value"] = metrics.get(self.metric, float("nan"))
            self.best["criterion"] = self._criterion_name
        self.best_metrics, self._stale = metrics, 0
        self.best_logits = joined
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


def _joined(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if pairs[0][0].dim() > 2:  # per-token logits of batches of different widths: not pooled
        return None
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def release_memory() -> None:
    """Give the heap's free pages back to the OS after a run. glibc keeps what a training step
    freed (here about twice its peak: +380 MiB after 40 MiniLM steps, +24 MiB once trimmed),
    and the service would otherwise hold it until it exits."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the allocator's free pages to the OS (glibc's malloc_trim). After every step too:
    between steps a job then holds about +20 MiB instead of its step's peak (+235 MiB on
    MiniLM), for no measurable time (bench/README.md, train_memory)."""
    if sys.platform.startswith("linux"):
        # Not glibc (musl, say): no malloc_trim, nothing to give back this way.
        with contextlib.suppress(OSError, AttributeError):
            _libc().malloc_trim(0)


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL("libc.so.6")


def micro_batches(
    batch: dict[str, torch.Tensor], budget: int | None
) -> list[dict[str, torch.Tensor]]:
    """Row slices of a padded batch with at most `budget` tokens each, cut to their own
    longest row. Activation memory grows with the tokens of a forward; on a CPU box the
    allocator keeps the peak of a step resident for the rest of the process, so the peak is
    bounded here (the arithmetic is the same: the gradients are summed)."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    if budget is None or rows * width <= budget:
        return [batch]
    step = max(1, budget // width)
    parts = []
    for start in range(0, rows, step):
        part = {k: v[start : start + step] for k, v in batch.items()}
        longest = int(part["attention_mask"].sum(dim=1).max())
        # Cut only the per-token tensors (a multi-label target may be as wide by chance), and
        # make them contiguous: the models `.view()` their labels.
        parts.append(
            {k: v[:, :longest].contiguous() if _per_token(k, v) else v for k, v in part.items()}
        )
    return parts


def _per_token(key: str, value: torch.Tensor) -> bool:
    if key == "labels":
        return value.dim() == 2 and value.dtype == torch.long  # token classification tags
    return value.dim() == 2


def _weight(batch: dict[str, torch.Tensor]) -> int:
    """What a batch's mean loss averages over: labelled tokens, or rows."""
    labels = batch["labels"]
    if labels.dim() == 2 and labels.dtype == torch.long:  # token classification
        return int((labels != IGNORE).sum())
    return int(labels.shape[0])


def _diverged(step: int, hp: Hyperparameters) -> SwitchyardError:
    return SwitchyardError(
        400,
        "training_diverged",
        f"the loss became NaN or infinite at step {step}; lower learning_rate "
        f"(it was {hp.learning_rate:g}) or leave it unset for the default",
        param="hyperparameters.learning_rate",
    )


def _out_of_memory(hp: Hyperparameters) -> SwitchyardError:
    return SwitchyardError(
        400,
        "out_of_memory",
        f"a training batch did not fit in memory; lower batch_size (it was {hp.batch_size}) "
        f"or max_length (it was {hp.max_length})",
        param="hyperparameters.batch_size",
    )
