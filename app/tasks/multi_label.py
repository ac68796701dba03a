"""Multi-label classification: any number of labels a row, a sigmoid a label, a threshold out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

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
    need_labels,
    show,
)
from app.tasks.classification import apply_function
from app.tasks.objectives import MultiLabel as MultiLabelObjective
from app.tasks.sequence import SequenceTask, as_matrix

NAME = "multi_label_classification"

_OBJECTIVE = MultiLabelObjective()


class MultiLabel(SequenceTask):
    """Rows are `{"text", "text_pair"?, "labels": [...]}`; the head scores every label."""

    name = NAME
    order = 1
    aliases: tuple[str, ...] = ("multi_label", "multilabel")
    parameters: frozenset[str] = frozenset({"threshold", "function_to_apply"})
    single_label = False
    family = NAME
    columns: tuple[str, ...] = ("labels",)
    detect_rank = 2
    primary_metric = "micro_f1"
    objective: Objective = _OBJECTIVE
    calibration: Calibration | None = _OBJECTIVE

    def check_row(self, row: Row) -> Row:
        """Text plus a list of label names; repeated labels count once."""
        out = check_text(row)
        labels = row.get("labels")
        if not isinstance(labels, list) or not all(
            isinstance(x, str) and x.strip() for x in labels
        ):
            raise RowProblem(f"labels must be a list of non-empty strings, got {show(labels)}")
        out["labels"] = list(dict.fromkeys(labels))
        return out

    def row_labels(self, row: Row) -> list[str]:
        """The row's labels."""
        return list(row["labels"])

    def head_size(self, labels: list[str]) -> int:
        """A row a label; one label is a yes/no question, so it is enough."""
        return need_labels(self.name, labels, 1)

    def strata(self, rows: Sequence[Row]) -> list[Hashable]:
        """A row stands for its rarest label, so rare labels reach validation too."""
        counts = Counter(label for row in rows for label in row["labels"])
        return [min(row["labels"], key=lambda x: (counts[x], x), default="") for row in rows]

    def label(self, row: Row, index: dict[str, int]) -> Any:
        """Multi-hot over the head's labels."""
        hot = [0.0] * len(index)
        for label in row["labels"]:
            hot[index[label]] = 1.0
        return hot

    def metrics(self, pairs: Pairs, labels: list[str]) -> dict[str, float]:
        """F1 and exact match of the labels over probability 0.5."""
        logits = torch.cat([p[0] for p in pairs])
        gold = torch.cat([p[1] for p in pairs])
        pred = (torch.sigmoid(logits) >= 0.5).int().numpy()
        return multi_label_metrics(pred, gold.int().numpy())

    def decode(
        self,
        logits: Outputs,
        *,
        labels: list[str],
        params: dict[str, Any],
        rows: Sequence[ServedRow],
    ) -> list[Any]:
        """Every label scoring at least `threshold` (0.5), best first."""
        threshold = float(params.get("threshold", 0.5))
        function = str(params.get("function_to_apply", "sigmoid"))
        scores = apply_function(as_matrix(logits), function).tolist()
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


def multi_label_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Micro/macro F1 and exact-match accuracy over a [rows, labels] 0/1 matrix."""
    # Imported here: scikit-learn takes seconds to load, and the registry and the routes
    # import the tasks without ever scoring or fitting.
    from sklearn.metrics import f1_score

    return {
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "exact_match": float((pred == gold).all(axis=1).mean()),
    }


TASK: HeadTask = MultiLabel()
