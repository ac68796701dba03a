"""Training task "generation": LoRA or prefix tuning through PEFT on a causal-LM view of the base.

The view shares every tensor with the served base (app/training/view.py), so training adds only
the adapter, its optimizer state and activations. Rows are `{"prompt", "completion"}` or chat
`{"messages"}`; the loss covers completion (assistant) tokens only, and prompts are tokenized by
the same function the serving path uses (app/tasks/generation.py). The best checkpoint by
validation loss is kept and saved in PEFT's layout, which the registry parses and the runtime
serves (LoRA into slots, prefixes into the KV cache).
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.methods import METHODS as ALL_METHODS
from app.tasks import GENERATION
from app.tasks.generation import IGNORE, example_ids, example_length
from app.training.hyperparameters import Hyperparameters, fill_defaults
from app.training.loop import trim_heap
from app.training.preflight import GENERATION_METHODS, preflight
from app.training.types import (
    CancelToken,
    TrainingCancelled,
    TrainingOutcome,
    TrainingPlan,
    TrainingReporter,
)
from app.training.view import build_view

Pause = Callable[[], None]
Example = tuple[list[int], list[int]]  # (input_ids, labels)
METHODS = GENERATION_METHODS
METRIC = "loss"  # validation loss on completion tokens: lower is better


def train_generation(
    plan: TrainingPlan,
    *,
    base: FrozenBase,
    reporter: TrainingReporter,
    cancel: CancelToken,
    max_rank: int,
    max_tokens: int,
    pause: Pause | None = None,
) -> TrainingOutcome:
    """Train one generation adapter; return the PEFT files of its best evaluation."""
    # The submit-time dry run again (task, method, hyperparameters, targets): same checks.
    setup = preflight(plan, base=base, max_rank=max_rank, max_tokens=max_tokens)
    lengths = [example_length(base.tokenizer, row) for row in plan.train_rows[:2000]]
    hp = fill_defaults(
        setup.hp,
        method=plan.method,
        rows=len(plan.train_rows),
        lengths=lengths,
        max_tokens=setup.max_length_cap,
    )
    torch.manual_seed(hp.seed)
    length = hp.max_length or max_tokens
    train = [example_ids(base.tokenizer, row, max_length=length) for row in plan.train_rows]
    val = [example_ids(base.tokenizer, row, max_length=length) for row in plan.validation_rows]
    view = build_view(base, task=GENERATION, num_labels=0)
    model = wrap(view, plan.method, hp, targets=setup.targets)
    loop = _Loop(base, model, hp, reporter, cancel, pause)
    best_state = loop.run(train, val or train[:64])
    model.load_state_dict(best_state, strict=False)
    return TrainingOutcome(
        files=_save(model),
        metrics=loop.best_metrics,
        history=loop.history,
        best=loop.best,
        hyperparameters=hp.model_dump(),
    )


def wrap(
    view: nn.Module, method: str, hp: Hyperparameters, *, targets: list[str] | None = None
) -> PeftModel:
    """PEFT's causal-LM model for the method, over the shared view; `targets` as resolved
    by the dry run (app/training/targets.py)."""
    causal = ALL_METHODS[method].causal
    if causal is None:
        raise bad_request(
            "unsupported_method",
            f"method {method!r} cannot train task generation; use one of {list(METHODS)}",
            param="method",
        )
    return causal.causal_lm(view, hp, targets=targets)


def batches(
    examples: list[Example],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    pad_id: int,
    device: torch.device,
) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches with labels; padding carries no loss and is masked."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for n, (row_ids, row_labels) in enumerate(chunk):
            ids[n, : len(row_ids)] = torch.tensor(row_ids)
            mask[n, : len(row_ids)] = 1
            labels[n, : len(row_labels)] = torch.tensor(row_labels)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        yield {k: v.to(device) for k, v in batch.items()}


def _save(model: PeftModel) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


class _Loop:
    """Epochs of AdamW with warm-up and linear decay; evaluation; best state; early stop."""

    def __init__(
        self,
        base: FrozenBase,
        model: PeftModel,
        hp: Hyperparameters,
        reporter: TrainingReporter,
        cancel: CancelToken,
        pause: Pause | None,
    ) -> None:
        self.base, self.model, self.hp = base, model, hp
        self.reporter, self.cancel, self.pause = reporter, cancel, pause
        self.pad_id = int(base.tokenizer.pad_token_id or 0)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.best_metrics: dict[str, float] = {}

    def run(self, train: list[Example], val: list[Example]) -> dict[str, torch.Tensor]:
        hp = self.hp
        epochs = hp.epochs or 3
        per_epoch = math.ceil(len(train) / hp.batch_size)
        total = min(per_epoch * epochs, hp.max_steps or per_epoch * epochs)
        optimizer, scheduler = self._optimizer(total)
        eval_every = hp.eval_every_steps or per_epoch
        best_state, step, stale = self._trainable_state(), 0, 0
        for epoch in range(epochs):
            for batch in batches(
                train,
                batch_size=hp.batch_size,
                shuffle=True,
                seed=hp.seed + epoch,
                pad_id=self.pad_id,
                device=self.base.device,
            ):
                self._between_steps()
                loss = self._step(batch, optimizer, scheduler)
                step += 1
                self._report(step, total, per_epoch, loss, float(scheduler.get_last_lr()[0]))
                if step % eval_every == 0 or step == total:
                    if self._evaluate(val, step=step, epoch=step / per_epoch):
                        best_state, stale = self._trainable_state(), 0
                    else:
                        stale += 1
                    if hp.early_stopping_patience and stale >= hp.early_stopping_patience:
                        self.reporter.event("info", {"message": f"early stop at step {step}"})
                        return best_state
                if step >= total:
                    return best_state
        return best_state

    def _report(self, step: int, total: int, per_epoch: int, loss: float, lr: float) -> None:
        self.reporter.progress(step=step, total_steps=total, epoch=step / per_epoch)
        if step % self.hp.log_every_steps == 0 or step == 1:
            self.reporter.event("loss", {"step": step, "loss": loss, "lr": lr})

    def _between_steps(self) -> None:
        if self.cancel.cancelled:
            raise TrainingCancelled(self.cancel.reason)
        if self.pause is not None:
            self.pause()  # let queued inference go first: serving shares these cores

    def _optimizer(
        self, total: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hp.learning_rate or 1e-3, weight_decay=self.hp.weight_decay
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
    ) -> float:
        self.model.train()
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], max_norm=1.0
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        trim_heap()  # what the step freed goes back to the OS, not kept until the job ends
        return float(loss.detach())

    def _evaluate(self, val: list[Example], *, step: int, epoch: float) -> bool:
        """Record loss and teacher-forced token accuracy on completion tokens; True if best."""
        metrics = evaluate(
            self.model,
            val,
            pad_id=self.pad_id,
            device=self.base.device,
            batch_size=max(self.hp.batch_size, 32),
            pause=self.pause,
        )
        entry = {"step": step, "epoch": round(epoch, 3), **metrics}
        self.history.append(entry)
        self.reporter.event("evaluation", entry)
        if self.best and metrics[METRIC] >= self.best["value"]:
            return False
        self.best = {
            "step": step,
            "epoch": round(epoch, 3),
            "metric": METRIC,
            "value": metrics[METRIC],
        }
        self.best_metrics = metrics
        return True

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            name: copy.deepcopy(param.detach())
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }


@torch.no_grad()
def evaluate(
    model: PeftModel,
    examples: list[Example],
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int,
    pause: Pause | None = None,
) -> dict[str, float]:
    """Mean loss per completion token and the share of them the model predicts (argmax)."""
    model.eval()
    loss_sum, right, count = 0.0, 0, 0
    for batch in batches(
        examples, batch_size=batch_size, shuffle=False, seed=0, pad_id=pad_id, device=device
    ):
        if pause is not None:
            pause()
        logits = (
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .logits[:, :-1]
            .float()
        )
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
        )
        right += int((logits.argmax(dim=-1)[keep] == labels[keep]).sum())
        count += int(keep.sum())
    return {"loss": loss_sum / max(count, 1), "token_accuracy": right / max(count, 1)}
