"""What the job manager hands the trainer and gets back: the seam between the two."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from app.registry.records import AdapterRef


@dataclass(frozen=True)
class TrainingPlan:
    """Everything one training run needs, already validated by the job manager.

    `hyperparameters` is the JSON object the job gave: the trainer's dry run
    (app/training/preflight.py) parses it once into `Hyperparameters`, and the run takes
    that typed record from there (a `Setup`, a `Recipe`); only contrastive still asks the
    dict which fields were given."""

    adapter: str
    task: str  # classification | multi_label_classification | regression | token_classification ...
    method: str  # lora | prefix | prompt | ia3 | linear_probe
    train_rows: list[dict[str, Any]]
    validation_rows: list[dict[str, Any]]
    labels: list[str]  # head order; [] for regression and generation
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # as given, unvalidated
    # Where validation_rows came from: "held_out" (our split of the training rows, which
    # cross-validation may redraw), "validation_data" (the user's), "training_rows" (none).
    validation_source: str = "validation_data"
    checkpoint_dir: str | None = None  # where resumable state may be written
    # language_modeling: the dataset's stored JSONL file, read lazily (train_rows stay empty)
    corpus: str | None = None
    # `base_adapter`: the stored LoRA version this run stacks on (app/training/stacking.py).
    base_adapter: AdapterRef | None = None


class TrainingReporter(Protocol):
    """Callbacks the trainer calls from its thread; the job manager persists them."""

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None: ...

    def event(self, kind: str, data: dict[str, Any]) -> None: ...  # "loss", "evaluation", "info"


@dataclass
class TrainingOutcome:
    """A finished run: the PEFT files of the best checkpoint and what was measured."""

    files: dict[str, bytes]  # adapter_config.json, adapter_model.safetensors
    metrics: dict[str, float]  # of the best checkpoint, on validation rows
    history: list[dict[str, Any]]  # one entry per evaluation
    best: dict[str, Any]  # {"step", "epoch", "metric", "value"}
    hyperparameters: dict[str, Any]  # effective values after defaults
    # The chosen checkpoint's raw logits on the validation rows and their gold labels, as the
    # served head computes them: what calibration (a temperature) is fitted on. None where the
    # run has no such logits (generation, token classification).
    validation_logits: tuple[torch.Tensor, torch.Tensor] | None = None
    # How the run was judged (app.training.selection): rule, folds, steps planned and run,
    # whether it stopped early; shown on the job.
    selection: dict[str, Any] = field(default_factory=dict)
    # method "auto": what was tried, [{method, metric, value, seconds, ...}]
    candidates: list[dict[str, Any]] | None = None
    # The task the adapter is registered and served as, when not the job's: a decoder's
    # language_modeling adapter is a generation adapter.
    task: str | None = None
    # The stored LoRA folded into `files` (a stack), and the metric with and without it.
    parent: AdapterRef | None = None
    domain_effect: dict[str, Any] | None = None


@dataclass
class CancelToken:
    """Set by cancel or shutdown; the trainer checks it between steps."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()


class TrainingCancelled(Exception):
    """Raised by the trainer when it sees its CancelToken set; nothing is registered."""


class TrainFn(Protocol):
    """The trainer as the job manager calls it (`app.training.trainer.train` bound to the base)."""

    def __call__(
        self, plan: TrainingPlan, *, reporter: TrainingReporter, cancel: CancelToken
    ) -> TrainingOutcome: ...


class RegisterFn(Protocol):
    """Stores a trained adapter as the next version; `Registry.register` fits."""

    def __call__(
        self,
        name: str,
        *,
        config_bytes: bytes,
        weights_bytes: bytes,
        task: str,
        labels: list[str],
        meta: dict[str, Any] | None = None,
    ) -> int: ...
