"""The multi-label task object: label lists, multi-hot targets, thresholds, rare strata."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.tasks import ALIASES, canonical_task, multi_label
from app.tasks.base import RowProblem

TASK = multi_label.TASK


def test_rows_drop_repeated_labels_and_name_bad_ones() -> None:
    assert TASK.check_row({"text": "a", "labels": ["x", "y", "x"]})["labels"] == ["x", "y"]
    assert TASK.check_row({"text": "a", "labels": []})["labels"] == []
    with pytest.raises(RowProblem, match="labels must be a list of non-empty strings"):
        TASK.check_row({"text": "a", "labels": "x"})
    assert canonical_task("multilabel") == TASK.name and ALIASES["multi_label"] == TASK.name


def test_one_label_is_enough_and_rare_labels_lead_strata() -> None:
    assert TASK.head_size(["x"]) == 1 and not TASK.single_label
    rows: list[dict[str, Any]] = [
        {"labels": ["common", "rare"]},
        {"labels": ["common"]},
        {"labels": []},
    ]
    assert TASK.strata(rows) == ["rare", "common", ""]


def test_targets_are_multi_hot_floats(tokenizer: PreTrainedTokenizerBase) -> None:
    row = {"text": "a b", "labels": ["z", "x"]}
    example = TASK.encode(row, tokenizer, index={"x": 0, "y": 1, "z": 2}, max_length=16)
    assert example.label == [1.0, 0.0, 1.0]
    labels = TASK.collate_labels([example], width=len(example.input_ids))
    assert labels.dtype == torch.float32 and labels.shape == (1, 3)


def test_metrics_and_decoding_threshold_the_sigmoid() -> None:
    logits = torch.tensor([[3.0, -3.0], [3.0, 3.0]])
    gold = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    metrics = TASK.metrics([(logits, gold)], ["x", "y"])
    assert metrics["exact_match"] == pytest.approx(0.5)
    assert TASK.objective.count(gold) == 4
    out = TASK.decode(logits, labels=["x", "y"], params={}, rows=[])
    assert [o["label"] for o in out[0]] == ["x"] and len(out[1]) == 2
    assert TASK.decode(logits, labels=["x", "y"], params={"threshold": 0.999}, rows=[]) == [[], []]


def test_head_fit_leaves_one_answer_labels_at_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = np.stack([(x[:, 0] > 0).astype(float), np.zeros(60)], axis=1)
    weight, bias = TASK.objective.fit(x, y, rows=2, c=1.0, tick=lambda: None)
    assert np.abs(weight[0]).sum() > 0 and not weight[1].any() and bias[1] == 0
    assert TASK.calibration is not None
    probs, truth = TASK.calibration.confidences(torch.zeros(3, 2), torch.ones(3, 2))
    assert probs.shape == (6, 2) and truth.tolist() == [1] * 6
