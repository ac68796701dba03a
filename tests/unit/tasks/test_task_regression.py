"""The regression task object: numeric labels, one output, quantile strata, correlations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.tasks import CLASSIFICATION, regression
from app.tasks.base import RowProblem

TASK = regression.TASK


def test_rows_take_numbers_and_numeric_strings_only() -> None:
    assert TASK.check_row({"text": "a", "label": "3.5"})["label"] == 3.5
    with pytest.raises(RowProblem, match="label must be a finite number"):
        TASK.check_row({"text": "a", "label": "nan"})
    with pytest.raises(RowProblem, match="label must be a finite number"):
        TASK.check_row({"text": "a", "label": True})


def test_classification_rows_with_numeric_labels_are_claimed() -> None:
    assert TASK.family == CLASSIFICATION
    assert TASK.claims([{"label": 1}, {"label": 2.5}])
    assert not TASK.claims([{"label": 1}, {"label": "2"}]) and not TASK.claims([])


def test_one_output_no_classes_and_bins_cover_the_range() -> None:
    assert TASK.head_size([]) == 1 and TASK.row_labels({"label": 2.0}) == []
    rows = [{"label": float(v)} for v in range(40)]
    keys = TASK.strata(rows)
    assert keys[0] == 0 and keys[-1] == 3 and set(keys) == {0, 1, 2, 3}


def test_scores_encode_collate_and_decode(tokenizer: PreTrainedTokenizerBase) -> None:
    example = TASK.encode({"text": "a", "label": 2.5}, tokenizer, index={}, max_length=8)
    assert example.label == 2.5
    assert TASK.collate_labels([example], width=3).dtype == torch.float32
    out = TASK.decode(torch.tensor([[0.25], [1.5]]), labels=[], params={}, rows=[])
    assert out == [{"score": 0.25}, {"score": 1.5}]


def test_metrics_loss_and_ridge_fit() -> None:
    logits, gold = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 4.0])
    metrics = TASK.metrics([(logits, gold)], [])
    assert metrics["pearson"] > 0.9 and metrics["mse"] == pytest.approx(1 / 3)
    assert float(TASK.objective.loss(logits, gold, reduction="sum")) == pytest.approx(1.0)
    assert TASK.objective.problem_type == "regression" and TASK.calibration is None
    x = np.arange(20, dtype=float).reshape(-1, 1)
    weight, bias = TASK.objective.fit(x, 2 * x[:, 0] + 1, rows=1, c=100.0, tick=lambda: None)
    assert weight.shape == (1, 1) and weight[0, 0] == pytest.approx(2.0, rel=0.01)
    assert bias[0] == pytest.approx(1.0, abs=0.2)
