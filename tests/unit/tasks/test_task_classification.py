"""The classification task object: rows, labels, encoding, objective, metrics and decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.errors import SwitchyardError
from app.tasks import TASKS, classification
from app.tasks.base import RowProblem

TASK = classification.TASK


def test_rows_are_normalised_and_bad_labels_named() -> None:
    assert TASK.check_row({"text": "a", "label": 1.0}) == {"text": "a", "label": "1"}
    assert TASK.check_row({"text": "a", "text_pair": "b", "label": "yes"})["text_pair"] == "b"
    with pytest.raises(RowProblem, match="label must be a non-empty string"):
        TASK.check_row({"text": "a", "label": " "})
    with pytest.raises(RowProblem, match="text_pair must be a non-empty string"):
        TASK.check_row({"text": "a", "text_pair": "", "label": "x"})


def test_two_classes_at_least_and_one_label_a_row() -> None:
    assert TASK.head_size(["a", "b", "c"]) == 3
    with pytest.raises(SwitchyardError, match="needs at least 2 labels, got 1"):
        TASK.head_size(["a"])
    assert TASK.single_label and TASK.row_labels({"label": "x"}) == ["x"]
    assert TASK.strata([{"label": "x"}, {"label": "y"}]) == ["x", "y"]
    assert TASKS["classification"] is TASK


def test_pairs_encode_into_one_sequence_with_the_class_index(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    row = {"text": "the cat", "text_pair": "a dog", "label": "b"}
    example = TASK.encode(row, tokenizer, index={"a": 0, "b": 1}, max_length=32)
    assert example.label == 1 and example.token_type_ids is not None
    assert set(example.token_type_ids) == {0, 1}  # both segments are there
    assert TASK.token_count(row, tokenizer) == len(example.input_ids)
    labels = TASK.collate_labels([example, example], width=len(example.input_ids))
    assert labels.dtype == torch.long and labels.tolist() == [1, 1]


def test_metrics_loss_and_decoding_read_the_same_logits() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    gold = torch.tensor([0, 1, 1])
    metrics = TASK.metrics([(logits, gold)], ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    total = TASK.objective.loss(logits, gold, reduction="sum")
    assert TASK.objective.count(gold) == 3
    assert float(total) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, gold)) * 3)
    out = TASK.decode(logits, labels=["a", "b"], params={"top_k": 2}, rows=[])
    assert [r[0]["label"] for r in out] == ["a", "b", "a"] and len(out[0]) == 2
    raw = TASK.decode(logits, labels=["a", "b"], params={"function_to_apply": "none"}, rows=[])
    assert raw[1][0]["score"] == pytest.approx(3.0)


def test_head_fit_separates_and_calibration_gives_probabilities() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (40, 3)), rng.normal(2, 1, (40, 3))])
    y = np.array([0] * 40 + [1] * 40)
    weight, bias = TASK.objective.fit(x, y, rows=3, c=1.0, tick=lambda: None)
    assert weight.shape == (3, 3) and bias[2] == -10.0  # the absent class is never predicted
    assert TASK.objective.score(x @ weight.T + bias, y) > 0.9
    assert not TASK.objective.separable(np.zeros(5))
    assert TASK.calibration is not None
    probs, truth = TASK.calibration.confidences(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    assert probs.sum(dim=-1).allclose(torch.ones(4)) and truth.tolist() == [0, 1, 2, 0]


def test_request_parameters_are_checked_before_batching() -> None:
    classification.check_params({"top_k": None, "function_to_apply": "sigmoid"})
    with pytest.raises(SwitchyardError, match="top_k 0 must be an integer"):
        classification.check_params({"top_k": 0})
    assert TASK.parameters == frozenset({"top_k", "function_to_apply"})
