"""The token classification task object: word tags, first sub-tokens, entities, seqeval."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.tasks import Readout, canonical_task, token_classification
from app.tasks.base import IGNORE, RowProblem

TASK = token_classification.TASK
TAGS = ["B-ORG", "I-ORG", "O"]


@dataclass
class Served:
    text: str
    offsets: list[tuple[int, int]] = field(default_factory=list)
    word_ids: list[int | None] = field(default_factory=list)


def test_rows_pair_words_with_tags() -> None:
    row = {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}
    assert TASK.check_row({**row, "extra": 1}) == row
    with pytest.raises(RowProblem, match="2 tokens but 1 tags"):
        TASK.check_row({"tokens": ["EU", "rejects"], "tags": ["O"]})
    assert canonical_task("ner") == TASK.name and TASK.readout is Readout.TOKENS


def test_only_first_sub_tokens_carry_tags(tokenizer: PreTrainedTokenizerBase) -> None:
    row = {"tokens": ["Switchyardness", "works"], "tags": ["B-ORG", "O"]}
    index = {tag: i for i, tag in enumerate(TAGS)}
    example = TASK.encode(row, tokenizer, index=index, max_length=32)
    labelled = [tag for tag in example.label if tag != IGNORE]
    assert labelled == [0, 2] and len(example.label) > 4  # [CLS], pieces, [SEP] ignored
    assert TASK.token_count(row, tokenizer) == len(example.input_ids)
    batch = TASK.collate_labels([example], width=len(example.input_ids) + 3)
    assert batch[0, -3:].tolist() == [IGNORE] * 3


def test_metrics_and_loss_skip_unlabelled_positions() -> None:
    logits = torch.tensor([[[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]])
    gold = torch.tensor([[0, 1, IGNORE]])
    assert TASK.metrics([(logits, gold)], TAGS)["entity_f1"] == 1.0
    assert TASK.objective.count(gold) == 2
    loss = TASK.objective.loss(logits, gold, reduction="sum")
    assert float(loss) == pytest.approx(2 * float(torch.log(1 + 2 * torch.exp(torch.tensor(-5.0)))))


def test_entities_decode_with_character_offsets(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "the European Union"
    enc = tokenizer(text, return_offsets_mapping=True)
    row = Served(text, [tuple(o) for o in enc["offset_mapping"]], enc.word_ids())
    tags = ["O", "O", "B-ORG", "I-ORG", "O"]  # [CLS] the european union [SEP]
    logits = torch.stack([torch.eye(3)[TAGS.index(t)] * 5 for t in tags])
    out = TASK.decode([logits], labels=TAGS, params={}, rows=[row])
    assert [(e["entity_group"], e["word"]) for e in out[0]] == [("ORG", "European Union")]
    assert TASK.head_size(["O"]) == 1 and TASK.calibration is None
