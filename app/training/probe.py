"""Frozen-feature heads: LP-FT head initialisation, and the `linear_probe` method itself.

Features come from the training view's backbone (its own modules over the shared tensors),
never from the serving modules, whose routing state belongs to the engine's thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from sklearn.linear_model import LogisticRegression, Ridge
from torch import nn

from app.base import BaseModel as Base
from app.tasks import MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION
from app.training import evaluation
from app.training.encoding import IGNORE, Example, batches
from app.training.hyperparameters import Hyperparameters
from app.training.types import (
    CancelToken,
    TrainingCancelled,
    TrainingOutcome,
    TrainingPlan,
    TrainingReporter,
)
from app.training.view import build_view


@torch.no_grad()
def sentence_features(backbone: nn.Module, examples: list[Example], *, layers: list[int] | None,
                      pooling: str, task: str, device: torch.device, pad_id: int) -> np.ndarray:
    """[rows, features]: the pooler (layers None) or pooled hidden states of `layers`."""
    from app.runtime.engine import pool

    backbone.eval()
    parts = []
    for batch in batches(examples, batch_size=64, shuffle=False, seed=0, task=task,
                         pad_id=pad_id, device=device):
        batch.pop("labels")
        out = backbone(**batch, output_hidden_states=layers is not None)
        if layers is None:
            pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else (
                out.last_hidden_state[:, 0])
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = torch.cat([pool(out.hidden_states[i], mask, pooling) for i in layers], dim=-1)
        parts.append(pooled.float().cpu())
    return torch.cat(parts).numpy()


@torch.no_grad()
def token_batches(backbone: nn.Module, examples: list[Example], *, device: torch.device,
                  pad_id: int, layers: list[int] | None = None
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: per-token features [rows, tokens, features] (the last layer, or `layers`
    concatenated, as the served probe reads them) and the tags (IGNORE where unlabelled)."""
    backbone.eval()
    out = []
    for batch in batches(examples, batch_size=64, shuffle=False, seed=0,
                         task=TOKEN_CLASSIFICATION, pad_id=pad_id, device=device):
        tags = batch.pop("labels")
        result = backbone(**batch, output_hidden_states=layers is not None)
        hidden = result.last_hidden_state if layers is None else torch.cat(
            [result.hidden_states[layer] for layer in layers], dim=-1)
        out.append((hidden.float().cpu(), tags.cpu()))
    return out


def token_features(backbone: nn.Module, examples: list[Example], *, device: torch.device,
                   pad_id: int, layers: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features at labelled (first sub-token) positions, with their tags."""
    pairs = token_batches(backbone, examples, device=device, pad_id=pad_id, layers=layers)
    xs = [hidden[tags != IGNORE] for hidden, tags in pairs]
    ys = [tags[tags != IGNORE] for _hidden, tags in pairs]
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def fit_head(x: np.ndarray, y: np.ndarray, *, task: str, rows: int,
             c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(weight [rows, features], bias [rows]) of a linear head fitted on frozen features."""
    if task == REGRESSION:
        ridge = Ridge(alpha=1.0 / c).fit(x, y)
        return ridge.coef_.reshape(1, -1), np.atleast_1d(ridge.intercept_)
    if task == MULTI_LABEL:
        weight, bias = np.zeros((rows, x.shape[1])), np.zeros(rows)
        for j in range(rows):
            if 0 < y[:, j].sum() < len(y):
                lr = LogisticRegression(C=c, max_iter=500).fit(x, y[:, j])
                weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        return weight, bias
    lr = LogisticRegression(C=c, max_iter=1000).fit(x, y)
    weight, bias = np.zeros((rows, x.shape[1])), np.full(rows, -10.0)
    classes = lr.classes_.astype(int)
    if len(classes) == 2:  # sklearn's binary model is one row: split it symmetrically
        weight[classes[1]], bias[classes[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
        weight[classes[0]], bias[classes[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
    else:
        weight[classes], bias[classes] = lr.coef_, lr.intercept_
    return weight, bias


def init_head(view: nn.Module, *, base: Base, task: str, examples: list[Example],
              hp: Hyperparameters) -> None:
    """LP-FT: start the task head from a probe fitted on frozen features."""
    backbone = getattr(view, base.prefix)
    pad = int(base.tokenizer.pad_token_id or 0)
    head: Any = view.classifier
    if task == TOKEN_CLASSIFICATION:
        x, y = token_features(backbone, examples, device=base.device, pad_id=pad)
    else:
        x = sentence_features(backbone, examples, layers=None, pooling="cls", task=task,
                              device=base.device, pad_id=pad)
        y = np.asarray([e.label for e in examples])
    if task != REGRESSION and task != MULTI_LABEL and len(np.unique(y)) < 2:
        return  # one class only: nothing to separate, keep the random head
    weight, bias = fit_head(x, y, task=task, rows=head.out_features)
    head.weight.data.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    head.bias.data.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def train_probe(plan: TrainingPlan, *, base: Base, hp: Hyperparameters, train: list[Example],
                val: list[Example], reporter: TrainingReporter,
                cancel: CancelToken) -> TrainingOutcome:
    """`linear_probe`: frozen pooled (or per-token) features of chosen layers, a head picked
    on validation among a few regularisation strengths."""
    backbone = getattr(build_view(base, task=plan.task, num_labels=1), base.prefix)
    x_train, y_train, score = _probe_data(plan, base, hp, backbone, train, val)
    rows = 1 if plan.task == REGRESSION else len(plan.labels)
    best: dict[str, Any] = {}
    history = []
    for step, c in enumerate((0.1, 1.0, 10.0), start=1):
        if cancel.cancelled:
            raise TrainingCancelled(cancel.reason)
        weight, bias = fit_head(x_train, y_train, task=plan.task, rows=rows, c=c)
        metrics = score(weight, bias)
        entry = {"step": step, "C": c, **metrics}
        history.append(entry)
        reporter.event("evaluation", entry)
        reporter.progress(step=step, total_steps=3, epoch=float(step))
        value = metrics.get(evaluation.primary_metric(plan.task), 0.0)
        if not best or value > best["value"]:
            best = {"step": step, "metric": evaluation.primary_metric(plan.task), "value": value,
                    "weight": weight, "bias": bias, "metrics": metrics}
    config = {"peft_type": "LINEAR_PROBE", "layers": hp.layers, "pooling": hp.pooling,
              "task_type": "FEATURE_EXTRACTION", "base_model_name_or_path": str(base.path)}
    tensors = {"classifier.weight": torch.as_tensor(best.pop("weight"), dtype=torch.float32),
               "classifier.bias": torch.as_tensor(best.pop("bias"), dtype=torch.float32)}
    return TrainingOutcome(
        files={"adapter_config.json": json.dumps(config, indent=2).encode(),
               "adapter_model.safetensors": save_safetensors(tensors)},
        metrics=best.pop("metrics"), history=history, best=best, hyperparameters=hp.model_dump(),
    )


Scorer = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def _probe_data(plan: TrainingPlan, base: Base, hp: Hyperparameters, backbone: nn.Module,
                train: list[Example], val: list[Example]) -> tuple[np.ndarray, np.ndarray, Scorer]:
    """Training features and targets, and how a fitted head scores on validation."""
    pad = int(base.tokenizer.pad_token_id or 0)
    if plan.task == TOKEN_CLASSIFICATION:
        x, y = token_features(backbone, train, device=base.device, pad_id=pad, layers=hp.layers)
        val_batches = token_batches(backbone, val, device=base.device, pad_id=pad,
                                    layers=hp.layers)

        def score_tokens(weight: np.ndarray, bias: np.ndarray) -> dict[str, float]:
            w = torch.as_tensor(weight, dtype=torch.float32)
            b = torch.as_tensor(bias, dtype=torch.float32)
            pairs = [(feats @ w.t() + b, tags) for feats, tags in val_batches]
            return evaluation.metrics_from_logits(pairs, task=plan.task, labels=plan.labels)

        return x, y, score_tokens
    x_train, x_val = [sentence_features(backbone, ex, layers=hp.layers, pooling=hp.pooling,
                                        task=plan.task, device=base.device, pad_id=pad)
                      for ex in (train, val)]
    gold = torch.as_tensor(np.asarray([e.label for e in val]))

    def score(weight: np.ndarray, bias: np.ndarray) -> dict[str, float]:
        logits = torch.as_tensor(x_val @ weight.T + bias, dtype=torch.float32)
        return evaluation.metrics_from_logits([(logits, gold)], task=plan.task,
                                              labels=plan.labels)

    return x_train, np.asarray([e.label for e in train]), score
