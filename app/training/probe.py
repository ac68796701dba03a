"""Frozen-feature heads: LP-FT head initialisation, and the `linear_probe` method itself.

Features come from the training view's backbone (its own modules over the shared tensors),
never from the serving modules, whose routing state belongs to the engine's thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from app.base import FrozenBase
from app.registry.probe_format import probe_files
from app.tasks import TOKEN_CLASSIFICATION, Readout, head_task
from app.training import evaluation
from app.training.encoding import IGNORE, Example, batch_order, collate
from app.training.heads import Tick, choose_c, fit_head
from app.training.heads import no_tick as _no_tick
from app.training.hyperparameters import Hyperparameters
from app.training.loop import yielding
from app.training.pooled import LAYERS, POOLING
from app.training.selection import Rule
from app.training.split import fold_indices
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter
from app.training.view import build_view

if TYPE_CHECKING:  # the recipe builds LP-FT heads with this module
    from app.training.recipe import Recipe

__all__ = ["fit_head", "init_head", "sentence_features", "token_features", "train_probe"]

# LP-FT only needs a good starting head: a sample bounds the probe's time on big data.
_INIT_ROWS = 4000
_INIT_SENTENCES = 2000  # token classification: about 30,000 labelled tokens
# Regularisation strengths tried on standardised features. Strong ones win on small data
# (SST-2, 2,000 rows, mean-pooled last layer: C=0.01 gave 78%, C=1 75% on the dev set).
_INIT_C_GRID = (0.01, 0.1, 1.0)
_PROBE_C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
_PROBE_LAYERS = 4  # linear_probe also tries the last four layers concatenated


@torch.no_grad()
def sentence_features(
    backbone: nn.Module,
    examples: list[Example],
    *,
    layers: list[int] | None,
    pooling: str,
    task: str,
    device: torch.device,
    pad_id: int,
    tick: Tick = _no_tick,
) -> np.ndarray:
    """[rows, features] in the order of `examples`: the pooler (layers None) or pooled hidden
    states of `layers`. Batches of similar lengths (less padding), put back in order."""
    from app.runtime.engine import pool

    backbone.eval()
    parts = []
    for chunk in batch_order(examples, batch_size=64, shuffle=False, seed=0, by_length=True):
        tick()
        batch = collate([examples[i] for i in chunk], task=task, pad_id=pad_id, device=device)
        batch.pop("labels")
        out = backbone(**batch, output_hidden_states=layers is not None)
        if layers is None:
            pooled = (
                out.pooler_output
                if getattr(out, "pooler_output", None) is not None
                else (out.last_hidden_state[:, 0])
            )
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = torch.cat([pool(out.hidden_states[i], mask, pooling) for i in layers], dim=-1)
        parts.append((chunk, pooled.float().cpu().numpy()))
    features = np.zeros((len(examples), parts[0][1].shape[1]), dtype=np.float32)
    for chunk, values in parts:
        features[chunk] = values
    return features


@torch.no_grad()
def token_batches(
    backbone: nn.Module,
    examples: list[Example],
    *,
    device: torch.device,
    pad_id: int,
    layers: list[int] | None = None,
    tick: Tick = _no_tick,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: per-token features [rows, tokens, features] (the last layer, or `layers`
    concatenated, as the served probe reads them) and the tags (IGNORE where unlabelled)."""
    backbone.eval()
    out = []
    for chunk in batch_order(examples, batch_size=64, shuffle=False, seed=0, by_length=True):
        tick()
        batch = collate(
            [examples[i] for i in chunk], task=TOKEN_CLASSIFICATION, pad_id=pad_id, device=device
        )
        tags = batch.pop("labels")
        result = backbone(**batch, output_hidden_states=layers is not None)
        hidden = (
            result.last_hidden_state
            if layers is None
            else torch.cat([result.hidden_states[layer] for layer in layers], dim=-1)
        )
        out.append((hidden.float().cpu(), tags.cpu()))
    return out


def token_features(
    backbone: nn.Module,
    examples: list[Example],
    *,
    device: torch.device,
    pad_id: int,
    layers: list[int] | None = None,
    tick: Tick = _no_tick,
) -> tuple[np.ndarray, np.ndarray]:
    """Features at labelled (first sub-token) positions, with their tags."""
    pairs = token_batches(
        backbone, examples, device=device, pad_id=pad_id, layers=layers, tick=tick
    )
    xs = [hidden[tags != IGNORE] for hidden, tags in pairs]
    ys = [tags[tags != IGNORE] for _hidden, tags in pairs]
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def init_head(
    view: nn.Module,
    *,
    base: FrozenBase,
    task: str,
    examples: list[Example],
    hp: Hyperparameters,
    pooled: bool = False,
    tick: Tick = _no_tick,
) -> None:
    """LP-FT: start the task head from a probe fitted on frozen features (of a sample of at
    most a few thousand rows), its regularisation picked on a held-out fifth. `pooled`: the
    head reads the mean of the last layer (app.training.pooled), else the pooler."""
    backbone = getattr(view, base.prefix)
    pad = int(base.tokenizer.pad_token_id or 0)
    head: Any = view.classifier
    if _per_token(task):
        sample = _sample(examples, _INIT_SENTENCES, hp.seed)
        x, y = token_features(backbone, sample, device=base.device, pad_id=pad, tick=tick)
    else:
        sample = _sample(examples, _INIT_ROWS, hp.seed)
        x = sentence_features(
            backbone,
            sample,
            layers=list(LAYERS) if pooled else None,
            pooling=POOLING if pooled else "cls",
            task=task,
            device=base.device,
            pad_id=pad,
            tick=tick,
        )
        y = np.asarray([e.label for e in sample])
    if not head_task(task).objective.separable(y):
        return  # one class only: nothing to separate, keep the random head
    rows = head.out_features
    # Too few rows to hold any out: a strong prior rather than a noisy choice.
    c = choose_c(x, y, task=task, rows=rows, grid=_INIT_C_GRID, tick=tick) if len(y) >= 50 else 0.1
    weight, bias = fit_head(x, y, task=task, rows=rows, c=c, tick=tick)
    head.weight.data.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    head.bias.data.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def _per_token(task: str) -> bool:
    """Token tasks fit their head on every labelled token, not on a vector a row."""
    return head_task(task).readout is Readout.TOKENS


def _sample(examples: list[Example], limit: int, seed: int) -> list[Example]:
    if len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def train_probe(recipe: Recipe, *, rule: Rule, reporter: TrainingReporter) -> TrainingOutcome:
    """`linear_probe`: frozen pooled (or per-token) features of some layers, the head picked
    among regularisation strengths and, unless `layers` was given, two layer sets: on the
    validation rows, or by k-fold cross-validation over all rows when `rule` says so (then
    the head is fitted on all of them)."""
    plan, base, hp, tick = recipe.plan, recipe.base, recipe.hp, recipe.tick
    folds = rule.folds if rule.name == "cross_validation" and not _per_token(plan.task) else 0
    train_rows = plan.train_rows + plan.validation_rows if folds else plan.train_rows
    train = recipe.encode(train_rows)
    val = [] if folds else recipe.encode(plan.validation_rows)
    backbone = getattr(build_view(base, task=plan.task, num_labels=1), base.prefix)
    candidates = _layer_candidates(plan.task, hp, base)
    with yielding(backbone, tick):
        x_train, y_train, score = _probe_data(
            plan, base, hp, candidates[-1], backbone, train, val, tick
        )
    width = x_train.shape[1] // len(candidates[-1])  # features per layer
    rows = head_task(plan.task).head_size(plan.labels)

    def judge(x: np.ndarray, c: float) -> Judged:
        if folds:  # the head is fitted on all rows once chosen
            metrics, pair = _cross_validated(x, y_train, plan, train_rows, rows, c, folds, tick)
            return np.zeros(0), np.zeros(0), metrics, pair
        weight, bias = fit_head(x, y_train, task=plan.task, rows=rows, c=c, tick=tick)
        return weight, bias, *score(weight, bias)

    best, history = _search(candidates, x_train, width, judge, plan.task, reporter)
    total = len(history)
    if folds:
        x = x_train[:, : width * len(best["layers"])]
        best["weight"], best["bias"] = fit_head(
            x, y_train, task=plan.task, rows=rows, c=best["C"], tick=tick
        )
        best["criterion"] = f"{folds}-fold cross-validation"
    hp.layers = best["layers"]
    selection = {**rule.as_json(), "planned_steps": total, "steps": total, "stopped_early": False}
    return _probe_outcome(base, hp, best, history, selection)


def _search(
    candidates: list[list[int]],
    x_train: np.ndarray,
    width: int,
    judge: Callable[[np.ndarray, float], Judged],
    task: str,
    reporter: TrainingReporter,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every (layers, C) of the grid judged in turn; the best (first of equals) and all."""
    metric = evaluation.primary_metric(task)
    best: dict[str, Any] = {}
    history = []
    total = len(candidates) * len(_PROBE_C_GRID)
    grid = ((layers, c) for layers in candidates for c in _PROBE_C_GRID)
    for step, (layers, c) in enumerate(grid, start=1):
        # Candidates are prefixes of the last one: their features are its first columns.
        weight, bias, metrics, pair = judge(x_train[:, : width * len(layers)], c)
        entry = {"step": step, "layers": layers, "C": c, **metrics}
        history.append(entry)
        reporter.event("evaluation", entry)
        reporter.progress(step=step, total_steps=total, epoch=float(step))
        value = metrics.get(metric, 0.0)
        if not best or value > best["value"]:
            best = {
                **{"step": step, "metric": metric, "value": value, "metrics": metrics},
                **{"weight": weight, "bias": bias, "layers": layers, "C": c, "logits": pair},
            }
    return best, history


def _cross_validated(
    x: np.ndarray,
    y: np.ndarray,
    plan: TrainingPlan,
    rows_of: list[dict[str, Any]],
    rows: int,
    c: float,
    folds: int,
    tick: Tick,
) -> tuple[dict[str, float], Logits]:
    """Out-of-fold metrics (and logits) of a head of strength `c` over all rows."""
    logits = np.zeros((len(x), rows), dtype=np.float32)
    for held in fold_indices(rows_of, plan.task, folds=folds):
        kept = np.setdiff1d(np.arange(len(x)), held)
        weight, bias = fit_head(x[kept], y[kept], task=plan.task, rows=rows, c=c, tick=tick)
        logits[held] = x[held] @ weight.T + bias
    pair = (torch.as_tensor(logits), torch.as_tensor(y))
    return evaluation.metrics_from_logits([pair], task=plan.task, labels=plan.labels), pair


def _layer_candidates(task: str, hp: Hyperparameters, base: FrozenBase) -> list[list[int]]:
    """The user's layers, else the last layer and the last few concatenated (one more point
    on SST-2 at 2,000 rows). Token features of four layers would not fit in memory on big
    data, so token classification keeps the last layer."""
    if "layers" in hp.model_fields_set or _per_token(task):
        return [hp.layers]
    states = int(getattr(base.config, "num_hidden_layers", 1)) + 1  # with the embeddings
    deep = [-i for i in range(1, min(_PROBE_LAYERS, states) + 1)]
    return [[-1], deep] if len(deep) > 1 else [[-1]]


def _probe_outcome(
    base: FrozenBase,
    hp: Hyperparameters,
    best: dict[str, Any],
    history: list[dict[str, Any]],
    selection: dict[str, Any],
) -> TrainingOutcome:
    # Saved so that plain PEFT loads it (see app.registry.probe_format).
    files = probe_files(
        base,
        layers=hp.layers,
        pooling=hp.pooling,
        weight=torch.as_tensor(best.pop("weight"), dtype=torch.float32),
        bias=torch.as_tensor(best.pop("bias"), dtype=torch.float32),
    )
    return TrainingOutcome(
        files=files,
        metrics=best.pop("metrics"),
        history=history,
        validation_logits=best.pop("logits"),
        best=best,
        hyperparameters=hp.model_dump(),
        selection=selection,
    )


Logits = tuple[torch.Tensor, torch.Tensor]
# A grid point's head (empty until refitted, under cross-validation), metrics and logits.
Judged = tuple[np.ndarray, np.ndarray, dict[str, float], Logits | None]
Scorer = Callable[[np.ndarray, np.ndarray], tuple[dict[str, float], Logits | None]]


def _probe_data(
    plan: TrainingPlan,
    base: FrozenBase,
    hp: Hyperparameters,
    layers: list[int],
    backbone: nn.Module,
    train: list[Example],
    val: list[Example],
    tick: Tick,
) -> tuple[np.ndarray, np.ndarray, Scorer]:
    """Training features of `layers` and targets, and how a head fitted on (the first columns
    of) them scores on validation."""
    if _per_token(plan.task):
        return _token_probe_data(plan, base, layers, backbone, train, val, tick)
    pad = int(base.tokenizer.pad_token_id or 0)
    x_train, x_val = [
        sentence_features(
            backbone,
            ex,
            layers=layers,
            pooling=hp.pooling,
            task=plan.task,
            device=base.device,
            pad_id=pad,
            tick=tick,
        )
        for ex in (train, val or train[:1])  # no validation under cross-validation
    ]
    gold = torch.as_tensor(np.asarray([e.label for e in val]))

    def score(weight: np.ndarray, bias: np.ndarray) -> tuple[dict[str, float], Logits | None]:
        if not val:
            return {}, None
        logits = torch.as_tensor(x_val[:, : weight.shape[1]] @ weight.T + bias, dtype=torch.float32)
        pair = (logits, gold)
        return evaluation.metrics_from_logits([pair], task=plan.task, labels=plan.labels), pair

    return x_train, np.asarray([e.label for e in train]), score


def _token_probe_data(
    plan: TrainingPlan,
    base: FrozenBase,
    layers: list[int],
    backbone: nn.Module,
    train: list[Example],
    val: list[Example],
    tick: Tick,
) -> tuple[np.ndarray, np.ndarray, Scorer]:
    """`_probe_data` of a token task: features and tags of every labelled token."""
    pad = int(base.tokenizer.pad_token_id or 0)
    x, y = token_features(backbone, train, device=base.device, pad_id=pad, layers=layers, tick=tick)
    val_batches = token_batches(
        backbone, val, device=base.device, pad_id=pad, layers=layers, tick=tick
    )

    def score_tokens(weight: np.ndarray, bias: np.ndarray) -> tuple[dict[str, float], None]:
        w = torch.as_tensor(weight, dtype=torch.float32)
        b = torch.as_tensor(bias, dtype=torch.float32)
        pairs = [(feats[..., : w.shape[1]] @ w.t() + b, tags) for feats, tags in val_batches]
        return evaluation.metrics_from_logits(pairs, task=plan.task, labels=plan.labels), None

    return x, y, score_tokens
