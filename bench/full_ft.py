"""The reference for bench/quality.py: a plain full fine-tune of the same base, in process.

Not part of the service (it changes every base weight). It sees exactly the rows the service's
job sees: the same held-out validation split (`holdout_split`), labels in the same order, the
same tokenization and max_length rule, and it keeps its best epoch on validation too. AdamW,
6% warm-up then linear decay, batch 32: the usual BERT recipe.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from app.tasks import REGRESSION, TOKEN_CLASSIFICATION, head_rows
from app.training import evaluation
from app.training.encoding import Example, batches, encode_rows, token_lengths
from app.training.rows import derive_labels
from app.training.split import holdout_split
from bench._common import base_dir


def full_finetune(
    task: str,
    rows: list[dict[str, Any]],
    test_rows: list[dict[str, Any]],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Train every weight; returns test metrics of the best validation epoch and the time."""
    torch.manual_seed(seed)
    labels = derive_labels(rows, task)
    train_rows, val_rows = holdout_split(rows, task)
    model, tokenizer = _model(task, head_rows(task, labels))
    lengths = sorted(token_lengths(train_rows, tokenizer, task=task))
    max_length = min(512, max(16, lengths[min(len(lengths) - 1, int(0.98 * len(lengths)))]))

    def encode(part: list[dict[str, Any]]) -> list[Example]:
        return encode_rows(part, tokenizer, task=task, labels=labels, max_length=max_length)

    train, val, test = encode(train_rows), encode(val_rows), encode(test_rows)
    started = time.monotonic()
    history, best_state = _train(
        model,
        task,
        labels,
        train,
        val,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
    )
    seconds = time.monotonic() - started
    model.load_state_dict(best_state)
    metrics = _metrics(model, task, labels, test)
    return {
        "metrics": metrics,
        "seconds": seconds,
        "epochs": float(epochs),
        "validation": history,
        "learning_rate": learning_rate,
        "max_length": max_length,
    }


def _model(task: str, num_labels: int) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoTokenizer

    folder = base_dir()
    factory = (
        AutoModelForTokenClassification
        if task == TOKEN_CLASSIFICATION
        else AutoModelForSequenceClassification
    )
    extra: dict[str, Any] = {"problem_type": "regression"} if task == REGRESSION else {}
    model = factory.from_pretrained(folder, num_labels=num_labels, **extra)
    return model, AutoTokenizer.from_pretrained(folder)


def _train(
    model: torch.nn.Module,
    task: str,
    labels: list[str],
    train: list[Example],
    val: list[Example],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    total = epochs * math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, int(0.06 * total))

    def schedule(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    metric = evaluation.primary_metric(task)
    history: list[dict[str, float]] = []
    best_state, best = copy.deepcopy(model.state_dict()), -math.inf
    for epoch in range(epochs):
        model.train()
        for batch in batches(
            train,
            batch_size=batch_size,
            shuffle=True,
            seed=seed + epoch,
            task=task,
            pad_id=0,
            device=torch.device("cpu"),
        ):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        scores = _metrics(model, task, labels, val)
        history.append({"epoch": epoch + 1, **scores})
        if scores.get(metric, -math.inf) > best:
            best, best_state = scores[metric], copy.deepcopy(model.state_dict())
    return history, best_state


def _metrics(
    model: torch.nn.Module, task: str, labels: list[str], examples: list[Example]
) -> dict[str, float]:
    return evaluation.evaluate(
        model,
        examples,
        task=task,
        labels=labels,
        pad_id=0,
        device=torch.device("cpu"),
        batch_size=64,
    )
