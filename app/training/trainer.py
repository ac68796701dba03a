"""The trainer: PEFT on a view of the shared base, best checkpoint kept, files returned.

Runs in a job worker thread. Between steps it checks the cancel token and calls `pause`, which
lets waiting inference requests run first, so serving keeps a fair share of the CPU.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.base import BaseModel as Base
from app.tasks import GENERATION, head_rows
from app.training import evaluation, methods, probe
from app.training.encoding import Example, batches, encode_rows, token_lengths
from app.training.generation import train_generation
from app.training.hyperparameters import Hyperparameters, fill_defaults, parse_hyperparameters
from app.training.methods import AdapterModel
from app.training.types import (
    CancelToken,
    TrainingCancelled,
    TrainingOutcome,
    TrainingPlan,
    TrainingReporter,
)
from app.training.view import build_view

Pause = Callable[[], None]


def train(
    plan: TrainingPlan, *, base: Base, reporter: TrainingReporter, cancel: CancelToken,
    max_rank: int, max_tokens: int, pause: Pause | None = None,
) -> TrainingOutcome:
    """Train one adapter and return the PEFT files of its best evaluation."""
    if plan.task == GENERATION:  # causal-LM loss on completions: its own module
        return train_generation(plan, base=base, reporter=reporter, cancel=cancel,
                                max_rank=max_rank, max_tokens=max_tokens, pause=pause)
    hp = parse_hyperparameters(plan.hyperparameters, max_rank=max_rank, max_tokens=max_tokens)
    lengths = token_lengths(plan.train_rows, base.tokenizer, task=plan.task)
    hp = fill_defaults(hp, method=plan.method, rows=len(plan.train_rows), lengths=lengths,
                       max_tokens=max_tokens)
    torch.manual_seed(hp.seed)
    encode = lambda rows: encode_rows(  # noqa: E731
        rows, base.tokenizer, task=plan.task, labels=plan.labels, max_length=hp.max_length or 128
    )
    train_ex, val_ex = encode(plan.train_rows), encode(plan.validation_rows)
    if plan.method == "linear_probe":
        return probe.train_probe(plan, base=base, hp=hp, train=train_ex, val=val_ex,
                                 reporter=reporter, cancel=cancel)
    view = build_view(base, task=plan.task, num_labels=head_rows(plan.task, plan.labels))
    if hp.head_init == "probe":
        probe.init_head(view, base=base, task=plan.task, examples=train_ex, hp=hp)
    model = _wrap(view, plan.method, hp, plan.task, base)
    loop = _Loop(plan, base, model, hp, reporter, cancel, pause)
    best_state = loop.run(train_ex, val_ex)
    model.load_state_dict(best_state, strict=False)
    return TrainingOutcome(
        files=_save(model), metrics=loop.best_metrics, history=loop.history, best=loop.best,
        hyperparameters=hp.model_dump(),
    )


def _wrap(view: nn.Module, method: str, hp: Hyperparameters, task: str,
          base: Base) -> AdapterModel:
    """The method's trainable model over the view: PEFT's, or ours for prefix tuning."""
    return methods.wrap(view, method, hp, task, base)


def _save(model: AdapterModel) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


class _Loop:
    """Epochs of AdamW with warm-up and linear decay; evaluation; best state; early stop."""

    def __init__(self, plan: TrainingPlan, base: Base, model: AdapterModel, hp: Hyperparameters,
                 reporter: TrainingReporter, cancel: CancelToken, pause: Pause | None) -> None:
        self.plan, self.base, self.model, self.hp = plan, base, model, hp
        self.reporter, self.cancel, self.pause = reporter, cancel, pause
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.best_metrics: dict[str, float] = {}
        self.metric = evaluation.primary_metric(plan.task)

    def run(self, train: list[Example], val: list[Example]) -> dict[str, torch.Tensor]:
        hp = self.hp
        epochs = hp.epochs or 3
        per_epoch = math.ceil(len(train) / hp.batch_size)
        total = min(per_epoch * epochs, hp.max_steps or per_epoch * epochs)
        optimizer, scheduler = self._optimizer(total)
        eval_every = hp.eval_every_steps or per_epoch
        best_state = self._trainable_state()
        step, stale = 0, 0
        for epoch in range(epochs):
            for batch in batches(train, batch_size=hp.batch_size, shuffle=True,
                                 seed=hp.seed + epoch, task=self.plan.task, pad_id=self._pad_id,
                                 device=self.base.device):
                self._between_steps()
                loss = self._step(batch, optimizer, scheduler)
                step += 1
                self.reporter.progress(step=step, total_steps=total, epoch=step / per_epoch)
                if step % hp.log_every_steps == 0 or step == 1:
                    self.reporter.event("loss", {"step": step, "loss": loss,
                                                 "lr": scheduler.get_last_lr()[0]})
                if step % eval_every == 0 or step == total:
                    improved = self._evaluate(val, step=step, epoch=step / per_epoch)
                    if improved:
                        best_state, stale = self._trainable_state(), 0
                    else:
                        stale += 1
                    if hp.early_stopping_patience and stale >= hp.early_stopping_patience:
                        self.reporter.event("info", {"message": f"early stop at step {step}"})
                        return best_state
                if step >= total:
                    return best_state
        return best_state

    @property
    def _pad_id(self) -> int:
        return int(self.base.tokenizer.pad_token_id or 0)

    def _between_steps(self) -> None:
        if self.cancel.cancelled:
            raise TrainingCancelled(self.cancel.reason)
        if self.pause is not None:
            self.pause()

    def _optimizer(
        self, total: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        head: list[nn.Parameter] = []
        body: list[nn.Parameter] = []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (head if "modules_to_save" in name else body).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": body, "lr": self.hp.learning_rate},
             {"params": head, "lr": self.hp.head_learning_rate}],
            weight_decay=self.hp.weight_decay,
        )
        warmup = max(1, int(self.hp.warmup_ratio * total))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def _step(self, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
        self.model.train()
        out = self.model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], max_norm=1.0
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    def _evaluate(self, val: list[Example], *, step: int, epoch: float) -> bool:
        metrics = evaluation.evaluate(self.model, val, task=self.plan.task, labels=self.plan.labels,
                                      pad_id=self._pad_id, device=self.base.device,
                                      batch_size=max(self.hp.batch_size, 64), pause=self.pause)
        entry = {"step": step, "epoch": round(epoch, 3), **metrics}
        self.history.append(entry)
        self.reporter.event("evaluation", entry)
        value = metrics.get(self.metric, float("-inf"))
        if self.best and value <= self.best["value"]:
            return False
        self.best = {"step": step, "epoch": round(epoch, 3), "metric": self.metric, "value": value}
        self.best_metrics = metrics
        return True

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            name: copy.deepcopy(param.detach())
            for name, param in self.model.named_parameters() if param.requires_grad
        }
