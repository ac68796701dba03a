"""Token classification: BIO tags on words, entity spans with character offsets, seqeval F1.

Only the first sub-token of each word carries a label, in training and in output, so a word
split into pieces is tagged once; entities are contiguous words of one type (pipeline-style
"first" aggregation) and report the text slice between their character offsets.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.tasks.base import (
    IGNORE,
    Calibration,
    Example,
    HeadTask,
    Objective,
    Outputs,
    Pairs,
    Readout,
    Row,
    RowProblem,
    ServedRow,
    need_labels,
    show,
)
from app.tasks.objectives import SingleLabel

NAME = "token_classification"


class TokenClassification:
    """Rows are `{"tokens": [...], "tags": [...]}`, a BIO tag a word; a head row a tag."""

    name = NAME
    order = 3
    aliases: tuple[str, ...] = ("ner",)
    kinds: frozenset[str] = frozenset({"encoder"})
    readout = Readout.TOKENS
    parameters: frozenset[str] = frozenset()
    methods: tuple[str, ...] | None = None
    single_label = False
    family = NAME
    columns: tuple[str, ...] = ("tokens", "tags")
    detect_rank = 0
    primary_metric = "entity_f1"
    objective: Objective = SingleLabel()
    calibration: Calibration | None = None

    def check_row(self, row: Row) -> Row:
        """Non-empty words, each with its tag."""
        tokens, tags = row.get("tokens"), row.get("tags")
        if (
            not isinstance(tokens, list)
            or not tokens
            or not all(isinstance(t, str) and t for t in tokens)
        ):
            raise RowProblem(
                f"tokens must be a non-empty list of non-empty strings, got {show(tokens)}"
            )
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise RowProblem(f"tags must be a list of non-empty strings, got {show(tags)}")
        if len(tags) != len(tokens):
            raise RowProblem(f"{len(tokens)} tokens but {len(tags)} tags; they must pair up")
        return {"tokens": tokens, "tags": tags}

    def claims(self, rows: Sequence[Row]) -> bool:
        """No other task has this shape."""
        return False

    def row_labels(self, row: Row) -> list[str]:
        """The row's tags."""
        return list(row["tags"])

    def head_size(self, labels: list[str]) -> int:
        """A row a tag."""
        return need_labels(self.name, labels, 1)

    def strata(self, rows: Sequence[Row]) -> list[Hashable]:
        """One stratum: a sentence has many tags."""
        return [None] * len(rows)

    def encode(
        self,
        row: Row,
        tokenizer: PreTrainedTokenizerBase,
        *,
        index: dict[str, int],
        max_length: int,
    ) -> Example:
        """Words tokenized; each word's first sub-token carries its tag, the rest IGNORE."""
        enc = tokenizer(
            row["tokens"], is_split_into_words=True, truncation=True, max_length=max_length
        )
        tags = [IGNORE] * len(enc["input_ids"])
        word_ids = enc.word_ids()
        for position in word_starts(word_ids):
            tags[position] = index[row["tags"][word_ids[position]]]
        return Example(enc["input_ids"], enc.get("token_type_ids"), tags)

    def token_count(self, row: Row, tokenizer: PreTrainedTokenizerBase) -> int:
        """Untruncated sub-tokens of the words."""
        return len(tokenizer(row["tokens"], is_split_into_words=True)["input_ids"])

    def collate_labels(self, chunk: list[Example], width: int) -> torch.Tensor:
        """Tags padded with IGNORE to the batch's width."""
        tags = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for n, example in enumerate(chunk):
            tags[n, : len(example.input_ids)] = torch.tensor(example.label)
        return tags

    def metrics(self, pairs: Pairs, labels: list[str]) -> dict[str, float]:
        """Entity-level scores of the argmax tag at every labelled position."""
        pred_tags: list[list[str]] = []
        gold_tags: list[list[str]] = []
        for logits, gold in pairs:
            for row_logits, row_gold in zip(logits, gold, strict=True):
                keep = row_gold != IGNORE
                pred_tags.append([labels[i] for i in row_logits[keep].argmax(-1).tolist()])
                gold_tags.append([labels[i] for i in row_gold[keep].tolist()])
        return entity_metrics(pred_tags, gold_tags)

    def decode(
        self,
        logits: Outputs,
        *,
        labels: list[str],
        params: dict[str, Any],
        rows: Sequence[ServedRow],
    ) -> list[Any]:
        """Entity groups a row, from that row's own [tokens, labels] logits."""
        return [
            decode_entities(
                row_logits,
                labels=labels,
                text=row.text,
                offsets=row.offsets,
                word_ids=row.word_ids,
            )
            for row_logits, row in zip(logits, rows, strict=True)
        ]


def word_starts(word_ids: list[int | None]) -> list[int]:
    """Token positions that begin a word."""
    starts, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            starts.append(position)
        previous = word
    return starts


def decode_entities(
    logits: torch.Tensor,
    *,
    labels: list[str],
    text: str,
    offsets: list[tuple[int, int]],
    word_ids: list[int | None],
) -> list[dict[str, Any]]:
    """Entity groups for one row; `logits` is [tokens, labels] for that row's tokens."""
    probs = torch.softmax(logits.float(), dim=-1)
    words = _word_spans(offsets, word_ids)
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for position in word_starts(word_ids):
        score, index = probs[position].max(dim=-1)
        tag = labels[int(index)]
        prefix, _, kind = tag.partition("-")
        start, end = words[word_ids[position]]  # type: ignore[index]
        if tag == "O" or not kind:
            current = None
            continue
        if current is not None and prefix == "I" and current["entity_group"] == kind:
            current["end"] = end
            current["_scores"].append(float(score))
            continue
        current = {"entity_group": kind, "start": start, "end": end, "_scores": [float(score)]}
        entities.append(current)
    for entity in entities:
        scores = entity.pop("_scores")
        entity["score"] = sum(scores) / len(scores)
        entity["word"] = text[entity["start"] : entity["end"]]
    return [{k: e[k] for k in ("entity_group", "score", "word", "start", "end")} for e in entities]


def _word_spans(
    offsets: list[tuple[int, int]], word_ids: list[int | None]
) -> dict[int, tuple[int, int]]:
    spans: dict[int, tuple[int, int]] = {}
    for (start, end), word in zip(offsets, word_ids, strict=True):
        if word is None:
            continue
        first = spans.get(word, (start, end))
        spans[word] = (min(first[0], start), max(first[1], end))
    return spans


def entity_metrics(pred: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, CoNLL rules)."""
    # Imported here: seqeval loads scikit-learn, seconds for tasks never scored.
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {
        "entity_f1": float(f1_score(gold, pred, zero_division=0)),
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
    }


TASK: HeadTask = TokenClassification()
