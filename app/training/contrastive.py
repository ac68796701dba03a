"""`method: "contrastive"`: SetFit's few-shot recipe, done with a LoRA on the shared frozen base.

SetFit (Tunstall et al., 2022) fine-tunes a sentence encoder on pairs drawn from the labelled
rows (same label: similar, different labels: dissimilar; the cosine of the two embeddings
regressed on 1 or 0), then fits a logistic regression on the adapted embeddings. With a few
rows a class it beats fine-tuning a classifier, because the pairs turn n rows into ~n^2 signals
and the loss shapes the very features the head reads. Here the body stays the shared base: only
a LoRA learns, over the mean-pooled last layer (app/training/pooled.py), and the stored adapter
is that LoRA plus the head: a pooled-head LoRA that serves like any other
(app/registry/pooled_head.py), marked `"switchyard_method": "contrastive"` for the catalog.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.base import FrozenBase
from app.tasks import CLASSIFICATION
from app.training import evaluation, methods
from app.training.encoding import Example, collate
from app.training.heads import fit_head
from app.training.hyperparameters import Hyperparameters
from app.training.loop import Ticker, yielding
from app.training.pooled import LAYERS, POOLING, PooledHeadModel, mark_pooled
from app.training.probe import sentence_features
from app.training.stepping import diverged, out_of_memory, trim_heap
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter
from app.training.view import build_view

Pair = tuple[int, int, float]  # (row, other row, 1.0 same label / 0.0 different)
# Iterations over the rows, each one positive and one negative pair per row. SetFit's default
# is 20 for the whole body at 2e-5; a LoRA at 1e-3 moves faster, and 10 scored as well on
# MiniLM (one seed each, 300 test rows: TREC 8/class 0.873 vs 0.847, SST-2 16/class 0.74 vs
# 0.69, CR 8/class 0.743 vs 0.79) for half the steps, so the method stays cheaper than SetFit.
MAX_ITERATIONS = 10
# Past this many pairs more rows buy little and cost linearly: hundreds of rows get fewer
# iterations. A step here costs 0.55 s against SetFit's 0.65 s (TREC fine, one thread;
# bench/README.md, contrastive_tune), so 50 labels x 8 rows (5,460 pairs, 342 steps) train
# in about a third of SetFit's 15,600 pairs.
MAX_PAIRS = 6000
PAIR_BATCH = 16  # SetFit's batch of pairs, unless the job gives batch_size
# Logistic-regression strengths on standardised features. SetFit's C=1 on unit-norm
# embeddings is about C=0.003 in these units, and cross-validation picked 0.003-0.03 in every
# measured run (CR, TREC coarse and fine, 8 rows a class), so the grid stays there.
C_GRID = (0.003, 0.01, 0.03, 0.1)
DEFAULT_C = 0.003  # a class with one row: nothing to cross-validate
MAX_FOLDS = 5
# Folds x rows bounded: 50 labels x 8 rows took 75 s for 5 folds of 6 strengths on a busy
# core; hundreds of rows get 3 folds, thousands 2.
FOLD_ROWS = 1500


def pair_iterations(rows: int, max_pairs: int = MAX_PAIRS) -> int:
    """MAX_ITERATIONS for a few dozen rows; fewer when those would pass `max_pairs`."""
    return max(1, min(MAX_ITERATIONS, max_pairs // max(1, 2 * rows)))


def sample_pairs(
    labels: Sequence[int], *, iterations: int, seed: int, max_pairs: int = MAX_PAIRS
) -> list[Pair]:
    """SetFit's sampling, seeded: every iteration, for each row (in a shuffled order) one
    positive pair with another row of its label and one negative with a row of another label;
    at most `max_pairs` pairs, shuffled. A row alone in its class gets no positive."""
    rng = random.Random(seed)
    members: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        members.setdefault(label, []).append(row)
    rank = {row: n for rows in members.values() for n, row in enumerate(rows)}
    pairs: list[Pair] = []
    order = list(range(len(labels)))
    for _ in range(iterations):
        rng.shuffle(order)
        for row in order:
            if len(pairs) >= max_pairs:
                break
            same = members[labels[row]]
            if len(same) > 1:  # another row of the class: skip the row's own place
                pick = rng.randrange(len(same) - 1)
                pairs.append((row, same[pick + (pick >= rank[row])], 1.0))
            if len(members) > 1 and len(pairs) < max_pairs:
                pairs.append((row, _other(labels, labels[row], rng), 0.0))
    rng.shuffle(pairs)
    return pairs


def _other(labels: Sequence[int], label: int, rng: random.Random) -> int:
    """A uniformly drawn row of another label (rejection: no per-label index to build, and
    the expected number of draws is rows / rows outside the label)."""
    while True:
        row = rng.randrange(len(labels))
        if labels[row] != label:
            return row


def contrastive_adapter(
    plan: TrainingPlan,
    *,
    base: FrozenBase,
    hp: Hyperparameters,
    train: list[Example],
    val: list[Example],
    reporter: TrainingReporter,
    tick: Ticker,
    targets: list[str] | None,
) -> TrainingOutcome:
    """Contrastive LoRA on pairs of `train`, then a logistic-regression head on the adapted
    pooled features; evaluated on `val`. Single-label classification only (preflight)."""
    _effective(plan, hp)
    labels = [int(e.label) for e in train]
    iterations = pair_iterations(len(train))
    pairs = sample_pairs(labels, iterations=iterations, seed=hp.seed)
    view = build_view(base, task=plan.task, num_labels=len(plan.labels))
    peft: Any = methods.wrap(view, "lora", hp, plan.task, base, targets=targets)
    model = PooledHeadModel(peft, backbone=base.prefix, task=plan.task)
    reporter.event("info", {"message": _pairs_message(len(train), iterations, pairs, hp)})
    with yielding(model, tick):
        steps = _train_pairs(model, base, pairs, train, hp, reporter, tick)
        x_train, x_val = (_features(model, base, rows, tick) for rows in (train, val))
    head, c, folds = _fit_head(x_train, np.asarray(labels), rows=len(plan.labels), tick=tick)
    _set_head(model, head)
    reporter.event("info", {"message": _head_message(len(train), c, folds)})
    if val:
        metrics, logits = _evaluate(plan, head, x_val, val)
    else:  # every row trained the adapter: the head's out-of-fold view is what is left
        metrics, logits = _head_out_of_fold(plan, x_train, np.asarray(labels), c=c, folds=folds)
    entry = {"step": steps, "epoch": float(hp.epochs or 1), **metrics}
    reporter.event("evaluation", entry)
    metric = evaluation.primary_metric(plan.task)
    best = {"step": steps, "epoch": entry["epoch"], "metric": metric}
    best.update(value=metrics.get(metric, 0.0), pairs=len(pairs), iterations=iterations, C=c)
    return TrainingOutcome(
        files=_save(model),
        metrics=metrics,
        history=[entry],
        best=best,
        hyperparameters=hp.model_dump(),
        validation_logits=logits,
    )


# The name issue 18's brief gave it; the trainer (app.training.contrastive_run) calls it as
# `contrastive_adapter`, under the job's selection rule.
train_contrastive = contrastive_adapter


def _evaluate(
    plan: TrainingPlan, head: tuple[np.ndarray, np.ndarray], x: np.ndarray, val: list[Example]
) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor] | None]:
    """Metrics of the head on the validation features, and its raw logits with the gold
    labels (what calibration is fitted on); nothing without validation rows."""
    if not val:
        return {}, None
    logits = torch.as_tensor(x @ head[0].T + head[1], dtype=torch.float32)
    gold = torch.as_tensor([int(e.label) for e in val], dtype=torch.long)
    pair = (logits, gold)
    return evaluation.metrics_from_logits([pair], task=plan.task, labels=plan.labels), pair


def _head_out_of_fold(
    plan: TrainingPlan, x: np.ndarray, y: np.ndarray, *, c: float, folds: int
) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor] | None]:
    """Metrics and logits of the head, each row scored by a head fitted without it, on
    features the adapter learned from every row: optimistic, but not the training fit."""
    if folds < 2:
        return {}, None
    rows = len(plan.labels)
    logits = np.zeros((len(y), rows), dtype=np.float32)
    from sklearn.model_selection import StratifiedKFold  # see `_cross_validated_c`

    for kept, held in StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(x, y):
        weight, bias = fit_head(x[kept], y[kept], task=CLASSIFICATION, rows=rows, c=c)
        logits[held] = x[held] @ weight.T + bias
    pair = (torch.as_tensor(logits), torch.as_tensor(y, dtype=torch.long))
    return evaluation.metrics_from_logits([pair], task=plan.task, labels=plan.labels), pair


def _effective(plan: TrainingPlan, hp: Hyperparameters) -> None:
    """SetFit's schedule where the job did not set one: one epoch over the pairs, 16 pairs a
    batch (fill_defaults sized both for row-level training)."""
    if "epochs" not in plan.hyperparameters:
        hp.epochs = 1
    if "batch_size" not in plan.hyperparameters:
        hp.batch_size = PAIR_BATCH


def _train_pairs(
    model: PooledHeadModel,
    base: FrozenBase,
    pairs: list[Pair],
    train: list[Example],
    hp: Hyperparameters,
    reporter: TrainingReporter,
    tick: Ticker,
) -> int:
    """AdamW on the LoRA weights with warm-up and linear decay; returns the steps taken."""
    per_epoch = max(1, math.ceil(len(pairs) / hp.batch_size))
    total = per_epoch * (hp.epochs or 1)
    total = min(total, hp.max_steps) if hp.max_steps else total
    params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate or 1e-3, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, hp.warmup_ratio))
    pad = int(base.tokenizer.pad_token_id or 0)
    model.train()
    step = 0
    for chunk in _batches(pairs, hp.batch_size, total=total, seed=hp.seed):
        tick()
        step += 1
        loss = _pair_step(model, chunk, train, pad, base.device, hp, step)
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        trim_heap()
        reporter.progress(step=step, total_steps=total, epoch=step / per_epoch)
        if step % hp.log_every_steps == 0 or step == 1:
            lr = scheduler.get_last_lr()[0]
            reporter.event("loss", {"step": step, "loss": loss, "lr": lr})
    return step


def _batches(pairs: list[Pair], size: int, *, total: int, seed: int) -> Iterator[list[Pair]]:
    """`total` batches of `size` pairs: the sampled order, then a seeded reshuffle per epoch."""
    served, epoch = 0, 0
    while served < total and pairs:
        order = list(pairs)
        if epoch:
            random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order), size):
            if served == total:
                return
            served += 1
            yield order[start : start + size]
        epoch += 1


def _pair_step(
    model: PooledHeadModel,
    chunk: list[Pair],
    train: list[Example],
    pad: int,
    device: torch.device,
    hp: Hyperparameters,
    step: int,
) -> float:
    """SetFit's CosineSimilarityLoss on one batch of pairs, backward included. Each distinct
    row is encoded once: with a few dozen rows a batch of 16 pairs repeats many of them."""
    rows = sorted({i for a, b, _t in chunk for i in (a, b)})
    where = {row: n for n, row in enumerate(rows)}
    batch = collate([train[r] for r in rows], task=CLASSIFICATION, pad_id=pad, device=device)
    try:
        embedded = model.embed(**batch)
        left = embedded[[where[a] for a, _b, _t in chunk]]
        right = embedded[[where[b] for _a, b, _t in chunk]]
        target = torch.tensor([t for _a, _b, t in chunk], dtype=embedded.dtype, device=device)
        loss = F.mse_loss(F.cosine_similarity(left, right, dim=-1), target)
        if not torch.isfinite(loss):
            raise diverged(step, hp)
        loss.backward()
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise out_of_memory(hp) from exc
    return float(loss.detach())


def _schedule(total: int, warmup_ratio: float) -> Any:
    """Linear warm-up, then linear decay to zero (the trainer's schedule)."""
    warmup = max(1, int(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _features(
    model: PooledHeadModel, base: FrozenBase, rows: list[Example], tick: Ticker
) -> np.ndarray:
    """The adapted pooled features of `rows`, as the served head will read them."""
    if not rows:
        return np.zeros((0, base.hidden_size), dtype=np.float32)
    return sentence_features(
        model.backbone,
        rows,
        layers=list(LAYERS),
        pooling=POOLING,
        task=CLASSIFICATION,
        device=base.device,
        pad_id=int(base.tokenizer.pad_token_id or 0),
        tick=tick,
    )


def _fit_head(
    x: np.ndarray, y: np.ndarray, *, rows: int, tick: Ticker
) -> tuple[tuple[np.ndarray, np.ndarray], float, int]:
    """The head, its C (cross-validated when every class has two rows or more) and the folds
    used (0: none, the default C)."""
    counts = np.bincount(y)
    folds = min(MAX_FOLDS, int(counts[counts > 0].min()), max(2, FOLD_ROWS // len(y)))
    c = _cross_validated_c(x, y, rows=rows, folds=folds, tick=tick) if folds >= 2 else DEFAULT_C
    head = fit_head(x, y, task=CLASSIFICATION, rows=rows, c=c, tick=tick)
    return head, c, folds if folds >= 2 else 0


def _cross_validated_c(
    x: np.ndarray, y: np.ndarray, *, rows: int, folds: int, tick: Ticker
) -> float:
    """The C of the grid with the best stratified k-fold accuracy; ties go to the stronger
    regularisation (the features were adapted on these very rows, so folds flatter big C)."""
    # Imported here, as app/tasks/objectives.py does: scikit-learn is about 44 MiB that a
    # process which only serves never needs.
    from sklearn.model_selection import StratifiedKFold

    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(x, y))
    scores = []
    for c in C_GRID:
        right = 0
        for kept, held in splits:
            weight, bias = fit_head(
                x[kept], y[kept], task=CLASSIFICATION, rows=rows, c=c, tick=tick
            )
            right += int(np.sum((x[held] @ weight.T + bias).argmax(axis=1) == y[held]))
        scores.append(right)
    return C_GRID[int(np.argmax(scores))]


@torch.no_grad()
def _set_head(model: PooledHeadModel, head: tuple[np.ndarray, np.ndarray]) -> None:
    """Write the fitted head into PEFT's trained copy of the classifier (what it saves)."""
    layer: Any = model.head
    layer.weight.copy_(torch.as_tensor(head[0], dtype=layer.weight.dtype))
    layer.bias.copy_(torch.as_tensor(head[1], dtype=layer.bias.dtype))


def _save(model: PooledHeadModel) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        mark_pooled(Path(tmp) / "adapter_config.json", switchyard_method="contrastive")
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def _pairs_message(rows: int, iterations: int, pairs: list[Pair], hp: Hyperparameters) -> str:
    positive = sum(1 for _a, _b, t in pairs if t)
    return (
        f"{rows} rows: {iterations} pair iteration(s), {len(pairs)} pairs ({positive} same-label)"
        f", {hp.epochs} epoch(s) of batches of {hp.batch_size} pairs"
    )


def _head_message(rows: int, c: float, folds: int) -> str:
    how = f"chosen by {folds}-fold cross-validation" if folds else "the default (too few rows)"
    return f"head: logistic regression on the adapted features of {rows} rows, C={c:g} ({how})"
