"""The trainer: PEFT on a view of the shared base, best checkpoint kept, files returned.

Runs in a job worker thread. Before every batch (training, evaluation, probe features) it checks
the cancel token and calls `pause`, which lets waiting inference requests run first, so serving
keeps a fair share of the CPU and a cancel lands within one batch (see `app.training.loop`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from app.base import BaseModel as Base
from app.tasks import GENERATION, head_rows
from app.training import methods, probe
from app.training.encoding import encode_rows, token_lengths
from app.training.generation import train_generation
from app.training.hyperparameters import fill_defaults
from app.training.loop import Pause, Ticker, TrainLoop, release_memory, yielding
from app.training.methods import AdapterModel
from app.training.preflight import preflight
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan, TrainingReporter
from app.training.view import build_view


def train(
    plan: TrainingPlan,
    *,
    base: Base,
    reporter: TrainingReporter,
    cancel: CancelToken,
    max_rank: int,
    max_tokens: int,
    pause: Pause | None = None,
    checkpoint_activations: bool = False,
    micro_batch_tokens: int | None = None,
) -> TrainingOutcome:
    """Train one adapter and return the PEFT files of its best evaluation."""
    try:
        return _train(
            plan,
            base=base,
            reporter=reporter,
            cancel=cancel,
            max_rank=max_rank,
            max_tokens=max_tokens,
            pause=pause,
            checkpoint_activations=checkpoint_activations,
            micro_batch_tokens=micro_batch_tokens,
        )
    finally:
        release_memory()


def _train(
    plan: TrainingPlan,
    *,
    base: Base,
    reporter: TrainingReporter,
    cancel: CancelToken,
    max_rank: int,
    max_tokens: int,
    pause: Pause | None = None,
    checkpoint_activations: bool = False,
    micro_batch_tokens: int | None = None,
) -> TrainingOutcome:
    if plan.task == GENERATION:  # causal-LM loss on completions: its own module
        return train_generation(
            plan,
            base=base,
            reporter=reporter,
            cancel=cancel,
            max_rank=max_rank,
            max_tokens=max_tokens,
            pause=pause,
        )
    # The submit-time dry run again, on the same base: the same checks, the same targets.
    setup = preflight(plan, base=base, max_rank=max_rank, max_tokens=max_tokens)
    lengths = token_lengths(plan.train_rows, base.tokenizer, task=plan.task)
    hp = fill_defaults(
        setup.hp,
        method=plan.method,
        rows=len(plan.train_rows),
        lengths=lengths,
        max_tokens=setup.max_length_cap,
    )
    torch.manual_seed(hp.seed)
    tick = Ticker(cancel, pause)
    encode = lambda rows: encode_rows(  # noqa: E731
        rows, base.tokenizer, task=plan.task, labels=plan.labels, max_length=hp.max_length or 128
    )
    train_ex, val_ex = encode(plan.train_rows), encode(plan.validation_rows)
    if plan.method == "linear_probe":
        return probe.train_probe(
            plan, base=base, hp=hp, train=train_ex, val=val_ex, reporter=reporter, tick=tick
        )
    view = build_view(base, task=plan.task, num_labels=head_rows(plan.task, plan.labels))
    if hp.head_init == "probe":
        reporter.event(
            "info",
            {"message": f"fitting the head on frozen features of {len(train_ex)} rows (LP-FT)"},
        )
        with yielding(view, tick):
            probe.init_head(view, base=base, task=plan.task, examples=train_ex, hp=hp, tick=tick)
    model = methods.wrap(view, plan.method, hp, plan.task, base, targets=setup.targets)
    if checkpoint_activations and plan.method != "prefix":
        # Keep only each layer's input and recompute the rest in the backward pass: the
        # activation peak becomes one layer's instead of all of them (bench/README.md,
        # train_contention). Non-reentrant, so frozen inputs need no requires_grad trick and
        # dropout draws are replayed exactly. Not prefix: its attention reads the batch's
        # prefixes from a router that is cleared once the forward returns, before recompute.
        view.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    loop = TrainLoop(plan, base, model, hp, reporter, tick, token_budget=micro_batch_tokens)
    with yielding(model, tick):
        best_state = loop.run(train_ex, val_ex, evaluate_start=hp.head_init == "probe")
    model.load_state_dict(best_state, strict=False)
    return TrainingOutcome(
        files=_save(model),
        metrics=loop.best_metrics,
        history=loop.history,
        best=loop.best,
        hyperparameters=hp.model_dump(),
    )


def _save(model: AdapterModel) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
