"""Token classification: BIO tags on words, entity spans with character offsets, seqeval F1.

Only the first sub-token of each word carries a label, in training and in output, so a word
split into pieces is tagged once; entities are contiguous words of one type (pipeline-style
"first" aggregation) and report the text slice between their character offsets.
"""

from __future__ import annotations

from typing import Any

import torch
from seqeval.metrics import f1_score, precision_score, recall_score


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
    return {
        "entity_f1": float(f1_score(gold, pred, zero_division=0)),
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
    }
