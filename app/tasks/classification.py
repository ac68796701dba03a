"""Sequence-level tasks: single-label, multi-label and regression heads over pooled features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from app.errors import bad_request
from app.tasks import MULTI_LABEL, REGRESSION


def decode(
    logits: torch.Tensor, *, task: str, labels: list[str], params: dict[str, Any]
) -> list[Any]:
    """Pipeline-shaped outputs for a [rows, outputs] logits tensor."""
    if task == REGRESSION:
        return [{"score": float(v)} for v in logits[:, 0].tolist()]
    if task == MULTI_LABEL:
        threshold = float(params.get("threshold", 0.5))
        scores = _apply(logits, str(params.get("function_to_apply", "sigmoid"))).tolist()
        return [
            sorted(
                (
                    {"label": lab, "score": p}
                    for lab, p in zip(labels, row, strict=True)
                    if p >= threshold
                ),
                key=lambda item: -float(item["score"]),
            )
            for row in scores
        ]
    top_k = params.get("top_k", 1)
    k = len(labels) if top_k is None else max(1, min(int(top_k), len(labels)))
    values, index = _apply(logits, str(params.get("function_to_apply", "softmax"))).topk(k, dim=-1)
    return [
        [{"label": labels[i], "score": s} for s, i in zip(srow, irow, strict=True)]
        for srow, irow in zip(values.tolist(), index.tolist(), strict=True)
    ]


def _apply(logits: torch.Tensor, function: str) -> torch.Tensor:
    """The pipeline's `function_to_apply`: softmax, sigmoid, or none (raw logits)."""
    logits = logits.float()
    if function == "none":
        return logits
    if function == "sigmoid":
        return torch.sigmoid(logits)
    if function == "softmax":
        return torch.softmax(logits, dim=-1)
    raise bad_request(
        "invalid_parameter",
        f"function_to_apply {function!r} is not one of softmax, sigmoid, none",
        param="parameters.function_to_apply",
    )


def classification_metrics(pred: list[int], gold: list[int]) -> dict[str, float]:
    """Accuracy and macro-F1."""
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
    }


def multi_label_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Micro/macro F1 and exact-match accuracy over a [rows, labels] 0/1 matrix."""
    return {
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "exact_match": float((pred == gold).all(axis=1).mean()),
    }


def regression_metrics(pred: list[float], gold: list[float]) -> dict[str, float]:
    """Pearson and Spearman correlation, and mean squared error."""
    p, g = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    if len(p) < 2 or np.std(p) == 0 or np.std(g) == 0:
        pearson = spearman = 0.0
    else:
        pearson = float(pearsonr(p, g)[0])
        spearman = float(spearmanr(p, g)[0])
    return {"pearson": pearson, "spearman": spearman, "mse": float(np.mean((p - g) ** 2))}


def check_params(params: dict[str, object]) -> None:
    """Reject bad `parameters` before the request joins a batch (400 naming the field)."""
    top_k = params.get("top_k", 1)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise bad_request(
            "invalid_parameter",
            f"top_k {top_k!r} must be an integer >= 1 or null",
            param="parameters.top_k",
        )
    threshold = params.get("threshold", 0.5)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not (0 <= threshold <= 1)
    ):
        raise bad_request(
            "invalid_parameter",
            f"threshold {threshold!r} must be within [0, 1]",
            param="parameters.threshold",
        )
    function = params.get("function_to_apply", "softmax")
    if function not in ("softmax", "sigmoid", "none"):
        raise bad_request(
            "invalid_parameter",
            f"function_to_apply {function!r} is not one of softmax, sigmoid, none",
            param="parameters.function_to_apply",
        )
