"""The task registry: discovery, names and aliases, the 400s, and every head task's round trip."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.errors import SwitchyardError
from app.tasks import (
    DECODER_TASKS,
    ENCODER_TASKS,
    HEAD_TASKS,
    TASKS,
    TRAINABLE,
    Readout,
    canonical_task,
    check_base,
    get_task,
    head_rows,
    head_task,
    reading,
)
from app.training.encoding import collate

# One valid row a head task: a new head task adds its row here.
ROWS: dict[str, dict[str, Any]] = {
    "classification": {"text": "good film", "label": "pos"},
    "multi_label_classification": {"text": "good film", "labels": ["pos"]},
    "regression": {"text": "good film", "label": 0.5},
    "token_classification": {"tokens": ["good", "film"], "tags": ["pos", "pos"]},
}


def test_every_module_registers_one_task_in_listing_order() -> None:
    assert list(TASKS) == [
        "classification",
        "multi_label_classification",
        "regression",
        "token_classification",
        "generation",
        "embeddings",
        "language_modeling",
    ]
    assert ENCODER_TASKS == ("classification", "multi_label_classification", "regression",
                             "token_classification", "embeddings", "language_modeling")  # fmt: skip
    assert DECODER_TASKS == ("generation", "embeddings", "language_modeling")
    assert reading(Readout.POOLED) == ("classification", "multi_label_classification", "regression")


def test_unknown_names_are_the_existing_400() -> None:
    with pytest.raises(SwitchyardError) as caught:
        get_task("summarisation")
    assert caught.value.status == 400 and caught.value.code == "invalid_task"
    assert canonical_task("ner") == "token_classification"
    with pytest.raises(SwitchyardError, match="has no encoder head"):
        head_task("generation")
    with pytest.raises(SwitchyardError, match="needs an encoder base; this one is a decoder"):
        check_base("regression", "decoder")
    assert head_rows("embeddings", []) == 0 and head_rows("classification", ["a", "b"]) == 2


@pytest.mark.parametrize("name", list(HEAD_TASKS))
def test_every_head_task_round_trips(name: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Row -> example -> batch -> loss and metrics -> decoded output, for any head task."""
    task = HEAD_TASKS[name]
    row = task.check_row(ROWS[name])
    labels = sorted(set(task.row_labels(row)) | {"other"})
    size = task.head_size(labels)
    examples = [
        task.encode(row, tokenizer, index={k: i for i, k in enumerate(labels)}, max_length=16)
    ]
    batch = collate(examples, task=name, pad_id=0, device=torch.device("cpu"))
    width = batch["input_ids"].shape[1]
    shape = (1, width, size) if task.readout is Readout.TOKENS else (1, size)
    logits = torch.zeros(shape)
    assert float(task.objective.loss(logits, batch["labels"], reduction="mean")) >= 0
    assert task.primary_metric in task.metrics([(logits, batch["labels"])], labels)
    assert name in TRAINABLE and task.strata([row]) is not None
    if task.readout is Readout.POOLED:
        assert len(task.decode(logits, labels=labels, params={}, rows=[])) == 1
