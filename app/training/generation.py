"""Training task "generation": LoRA or prefix tuning through PEFT on a causal-LM view of the base.

The view shares every tensor with the served base (app/training/view.py), so training adds only
the adapter, its optimizer state and activations. Rows are `{"prompt", "completion"}` or chat
`{"messages"}`; the loss covers completion (assistant) tokens only, and prompts are tokenized by
the same function the serving path uses (app/tasks/generation.py). The best checkpoint by
validation loss is kept and saved in PEFT's layout, which the registry parses and the runtime
serves (LoRA into slots, prefixes into the KV cache).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.methods import METHODS as ALL_METHODS
from app.methods import decoder_methods
from app.tasks import GENERATION
from app.tasks.generation import IGNORE, example_ids, example_length
from app.training.hyperparameters import Hyperparameters, fill_defaults
from app.training.loop import Ticker, TrainLoop, save_files
from app.training.objectives import Judged
from app.training.preflight import Setup
from app.training.selection import Rule
from app.training.stacking import ParentLora, attach_parent
from app.training.stepping import Batch, next_token_weight
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter
from app.training.view import build_view

Pause = Callable[[], None]
Example = tuple[list[int], list[int]]  # (input_ids, labels)
METHODS = decoder_methods(stored=False)  # auto: lora, the one candidate
METRIC = "loss"  # validation loss on completion tokens: lower is better
LOSS_RULE = Rule("validation_loss", criterion=METRIC, early_stop=True)


def train_generation(
    plan: TrainingPlan,
    *,
    base: FrozenBase,
    setup: Setup,
    reporter: TrainingReporter,
    tick: Ticker,
    token_budget: int | None = None,
    parent: ParentLora | None = None,
) -> TrainingOutcome:
    """Train one generation adapter from the dry run's `setup`; return the PEFT files of its
    best evaluation. The loop is the encoder tasks' (app/training/loop.py), so NaN losses,
    out-of-memory, micro-batches of `token_budget` tokens and cancel behave the same."""
    lengths = [example_length(base.tokenizer, row) for row in plan.train_rows[:2000]]
    hp = fill_defaults(
        setup.hp,
        method=plan.method,
        rows=len(plan.train_rows),
        lengths=lengths,
        max_tokens=setup.max_length_cap,
    )
    torch.manual_seed(hp.seed)
    length = hp.max_length or setup.max_length_cap
    train = [example_ids(base.tokenizer, row, max_length=length) for row in plan.train_rows]
    val = [example_ids(base.tokenizer, row, max_length=length) for row in plan.validation_rows]
    view = build_view(base, task=GENERATION, num_labels=0)
    model = wrap(view, plan.method, hp, targets=setup.targets)
    if parent is not None:  # a domain LoRA under the trained one (app/training/stacking.py)
        attach_parent(model, parent, base)
    objective = GenerationObjective(base, eval_batch_size=max(hp.batch_size, 32))
    loop = TrainLoop(
        plan, base, model, hp, reporter, tick,
        token_budget=token_budget, rule=LOSS_RULE, objective=objective,
    )  # fmt: skip
    model.load_state_dict(loop.run(train, val or train[:64], evaluate_start=False), strict=False)
    return TrainingOutcome(
        files=save_files(model),
        metrics=loop.best_metrics,
        history=loop.history,
        best=loop.best,
        hyperparameters=hp.model_dump(),
    )


@dataclass(frozen=True)
class GenerationObjective:
    """Causal-LM loss on completion tokens; the checkpoint with the lowest validation loss."""

    base: FrozenBase
    eval_batch_size: int
    metric: str = METRIC

    @property
    def _pad_id(self) -> int:
        return int(self.base.tokenizer.pad_token_id or 0)

    def batches(
        self, examples: list[Example], *, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[Batch]:
        """Right-padded prompt/completion batches."""
        return batches(
            examples,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            pad_id=self._pad_id,
            device=self.base.device,
        )

    def weight(self, batch: Batch) -> int:
        """The completion tokens the model predicts."""
        return next_token_weight(batch)

    def evaluate(self, model: nn.Module, examples: list[Example], *, pause: Pause) -> Judged:
        """Loss and token accuracy; lower loss is better."""
        metrics = evaluate(
            model,
            examples,
            pad_id=self._pad_id,
            device=self.base.device,
            batch_size=self.eval_batch_size,
            pause=pause,
        )
        return Judged(entry=metrics, metrics=metrics, score=-metrics[METRIC], value=metrics[METRIC])


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
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
