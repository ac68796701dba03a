"""The embeddings task object: both base kinds, pooling parameters, normalised vectors."""

from __future__ import annotations

import pytest
import torch

from app.errors import SwitchyardError
from app.tasks import TRAINABLE, check_base, embeddings, trainable_task

TASK = embeddings.TASK


def test_served_on_both_kinds_but_never_trained() -> None:
    assert check_base(TASK.name, "encoder") is TASK and check_base(TASK.name, "decoder") is TASK
    assert TASK.name not in TRAINABLE and TASK.head_size(["x"]) == 0
    with pytest.raises(SwitchyardError, match="cannot be trained"):
        trainable_task(TASK.name)


def test_parameters_default_to_the_mean_of_the_last_layer() -> None:
    assert TASK.layers({}) == [-1] and TASK.pooling({}) == "mean"
    assert (
        TASK.layers({"layers": [-2, -1]}) == [-2, -1] and TASK.pooling({"pooling": "cls"}) == "cls"
    )
    assert TASK.parameters == frozenset({"layers", "pooling", "normalize"})


def test_vectors_are_unit_length_unless_asked_otherwise() -> None:
    pooled = torch.tensor([[3.0, 4.0]])
    assert TASK.decode(pooled, {}) == [[pytest.approx(0.6), pytest.approx(0.8)]]
    assert TASK.decode(pooled, {"normalize": False}) == [[3.0, 4.0]]
