"""Single-label classification of a text or a text pair: softmax head, top-k labels out.

Also home of what the pooled head tasks' serving shares: `function_to_apply` and the check of
a predict request's `parameters`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from app.errors import bad_request
from app.tasks.base import (
    Calibration,
    HeadTask,
    Objective,
    Outputs,
    Pairs,
    Row,
    RowProblem,
    ServedRow,
    check_text,
    is_number,
    need_labels,
    show,
)
from app.tasks.objectives import SingleLabel
from app.tasks.sequence import SequenceTask, as_matrix

NAME = "classification"
FUNCTIONS = ("softmax", "sigmoid", "none")

_OBJECTIVE = SingleLabel()


class Classification(SequenceTask):
    """One class of a closed set a row; rows are `{"text", "text_pair"?, "label"}`."""

    name = NAME
    order = 0
    aliases: tuple[str, ...] = ()
    parameters: frozenset[str] = frozenset({"top_k", "function_to_apply"})
    single_label = True
    family = NAME
    columns: tuple[str, ...] = ("label",)
    detect_rank = 3
    primary_metric = "accuracy"
    objective: Objective = _OBJECTIVE
    calibration: Calibration | None = _OBJECTIVE

    def check_row(self, row: Row) -> Row:
        """Text plus a class name; integer class ids (HF exports) become names."""
        out = check_text(row)
        label = row.get("label")
        if isinstance(label, str) and label.strip():
            out["label"] = label
        elif is_number(label) and math.isfinite(label):
            # 1 and 1.0 both mean class "1".
            out["label"] = str(int(label)) if float(label).is_integer() else str(label)
        else:
            raise RowProblem(f"label must be a non-empty string (a class name), got {show(label)}")
        return out

    def row_labels(self, row: Row) -> list[str]:
        """The row's class."""
        return [row["label"]]

    def head_size(self, labels: list[str]) -> int:
        """A row a class; at least two classes."""
        return need_labels(self.name, labels, 2)

    def strata(self, rows: Sequence[Row]) -> list[Hashable]:
        """The class: every class reaches validation."""
        return [row["label"] for row in rows]

    def label(self, row: Row, index: dict[str, int]) -> Any:
        """The class's head row."""
        return index[str(row["label"])]

    def metrics(self, pairs: Pairs, labels: list[str]) -> dict[str, float]:
        """Accuracy and macro-F1 of the argmax."""
        logits = torch.cat([p[0] for p in pairs])
        gold = torch.cat([p[1] for p in pairs])
        return classification_metrics(logits.argmax(-1).tolist(), gold.tolist())

    def decode(
        self,
        logits: Outputs,
        *,
        labels: list[str],
        params: dict[str, Any],
        rows: Sequence[ServedRow],
    ) -> list[Any]:
        """The `top_k` best labels a row, scored by `function_to_apply` (softmax)."""
        top_k = params.get("top_k", 1)
        k = len(labels) if top_k is None else max(1, min(int(top_k), len(labels)))
        function = str(params.get("function_to_apply", "softmax"))
        values, index = apply_function(as_matrix(logits), function).topk(k, dim=-1)
        return [
            [{"label": labels[i], "score": s} for s, i in zip(srow, irow, strict=True)]
            for srow, irow in zip(values.tolist(), index.tolist(), strict=True)
        ]


def apply_function(logits: torch.Tensor, function: str) -> torch.Tensor:
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
    # Imported here: scikit-learn takes seconds to load, and the registry and the routes
    # import the tasks without ever scoring or fitting.
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
    }


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
    if function not in FUNCTIONS:
        raise bad_request(
            "invalid_parameter",
            f"function_to_apply {function!r} is not one of softmax, sigmoid, none",
            param="parameters.function_to_apply",
        )


TASK: HeadTask = Classification()
