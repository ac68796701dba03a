"""Regression: a score a text (or text pair), one linear output, correlation metrics."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from app.tasks import classification
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
    show,
)
from app.tasks.objectives import Score
from app.tasks.sequence import SequenceTask, as_matrix

NAME = "regression"
_BINS = 10  # validation strata: quantile bins of the target


class Regression(SequenceTask):
    """Rows are `{"text", "text_pair"?, "label": number}`: classification's shape, so a file
    of `label` rows is regression when every label is a number."""

    name = NAME
    order = 2
    aliases: tuple[str, ...] = ()
    parameters: frozenset[str] = frozenset()
    single_label = False
    family = classification.NAME
    columns: tuple[str, ...] = ()  # detected as a variant of its family (see `claims`)
    detect_rank = classification.TASK.detect_rank
    primary_metric = "pearson"
    objective: Objective = Score()
    calibration: Calibration | None = None

    def check_row(self, row: Row) -> Row:
        """Text plus a finite number (numeric strings too)."""
        out = check_text(row)
        label = row.get("label")
        try:
            value = float(label) if is_number(label) or isinstance(label, str) else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise RowProblem(f"label must be a finite number, got {show(label)}")
        out["label"] = value
        return out

    def claims(self, rows: Sequence[Row]) -> bool:
        """`label` rows whose labels are all numbers."""
        labels = [row.get("label") for row in rows]
        return bool(labels) and all(is_number(x) for x in labels)

    def row_labels(self, row: Row) -> list[str]:
        """A score is no class."""
        return []

    def head_size(self, labels: list[str]) -> int:
        """One output, the score."""
        return 1

    def strata(self, rows: Sequence[Row]) -> list[Hashable]:
        """Quantile bins of the target: validation covers the low, middle and high scores."""
        order = sorted(range(len(rows)), key=lambda i: float(rows[i]["label"]))
        bins = min(_BINS, max(1, len(rows) // 10))
        keys: list[Hashable] = [0] * len(rows)
        for rank, index in enumerate(order):
            keys[index] = rank * bins // len(rows)
        return keys

    def label(self, row: Row, index: dict[str, int]) -> Any:
        """The score."""
        return float(row["label"])

    def metrics(self, pairs: Pairs, labels: list[str]) -> dict[str, float]:
        """Correlations and error of the one output."""
        logits = torch.cat([p[0] for p in pairs])
        gold = torch.cat([p[1] for p in pairs])
        return regression_metrics(logits[:, 0].tolist(), gold.tolist())

    def decode(
        self,
        logits: Outputs,
        *,
        labels: list[str],
        params: dict[str, Any],
        rows: Sequence[ServedRow],
    ) -> list[Any]:
        """`{"score"}` a row."""
        return [{"score": float(v)} for v in as_matrix(logits)[:, 0].tolist()]


def regression_metrics(pred: list[float], gold: list[float]) -> dict[str, float]:
    """Pearson and Spearman correlation, and mean squared error."""
    # Imported here: like scikit-learn, scipy.stats is slow to load for tasks never scored.
    from scipy.stats import pearsonr, spearmanr

    p, g = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    if len(p) < 2 or np.std(p) == 0 or np.std(g) == 0:
        pearson = spearman = 0.0
    else:
        pearson = float(pearsonr(p, g)[0])
        spearman = float(spearmanr(p, g)[0])
    return {"pearson": pearson, "spearman": spearman, "mse": float(np.mean((p - g) ** 2))}


TASK: HeadTask = Regression()
