"""Rows to tensors per task: tokenization, label encoding, padding into batches.

Token classification labels only the first sub-token of each word (-100 elsewhere), which is
the same rule the serving path uses to read entities back out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.tasks import MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION
from app.tasks.token_classification import word_starts

IGNORE = -100
_GROUP_SPAN = 50  # batches sorted together by length


@dataclass
class Example:
    """One tokenized training row."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    label: Any  # int, float, list[float] (multi-hot) or list[int] (per token)


def encode_rows(
    rows: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    task: str,
    labels: list[str],
    max_length: int,
) -> list[Example]:
    """Tokenize rows and encode their labels for `task`."""
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for row in rows:
        if task == TOKEN_CLASSIFICATION:
            enc = tokenizer(
                row["tokens"], is_split_into_words=True, truncation=True, max_length=max_length
            )
            tags = [IGNORE] * len(enc["input_ids"])
            word_ids = enc.word_ids()
            for position in word_starts(word_ids):
                tags[position] = index[row["tags"][word_ids[position]]]
            out.append(Example(enc["input_ids"], enc.get("token_type_ids"), tags))
            continue
        enc = tokenizer(row["text"], row.get("text_pair"), truncation=True, max_length=max_length)
        out.append(Example(enc["input_ids"], enc.get("token_type_ids"), _label(row, task, index)))
    return out


def _label(row: dict[str, Any], task: str, index: dict[str, int]) -> Any:
    if task == REGRESSION:
        return float(row["label"])
    if task == MULTI_LABEL:
        hot = [0.0] * len(index)
        for label in row["labels"]:
            hot[index[label]] = 1.0
        return hot
    return index[str(row["label"])]


def token_lengths(
    rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, *, task: str
) -> list[int]:
    """Untruncated token counts of a sample of rows, to pick max_length from the data."""
    sample = rows[:2000]
    if task == TOKEN_CLASSIFICATION:
        return [len(tokenizer(r["tokens"], is_split_into_words=True)["input_ids"]) for r in sample]
    return [len(tokenizer(r["text"], r.get("text_pair"))["input_ids"]) for r in sample]


def batches(
    examples: list[Example],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    task: str,
    pad_id: int,
    device: torch.device,
    by_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches. Training (`shuffle`) draws seeded batches of similar lengths; `by_length`
    (for callers whose labels travel with the batch) sorts by length; else the input order."""
    for chunk in batch_order(
        examples, batch_size=batch_size, shuffle=shuffle, seed=seed, by_length=by_length
    ):
        yield collate([examples[i] for i in chunk], task=task, pad_id=pad_id, device=device)


def batch_order(
    examples: list[Example], *, batch_size: int, shuffle: bool, seed: int, by_length: bool = False
) -> list[list[int]]:
    """Indices of each batch. Padding to the longest row of a batch wastes most of the compute
    on short-text data (SST-2: 13 tokens on average, batches padded to 40-56), so rows are
    grouped by length: shuffled, cut into spans of 50 batches, sorted by length inside a span,
    batched, and the batches shuffled (transformers' `group_by_length`, in effect)."""
    order = list(range(len(examples)))
    size = lambda i: len(examples[i].input_ids)  # noqa: E731
    if not shuffle:
        if by_length:
            order.sort(key=size)
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    span = batch_size * _GROUP_SPAN
    out = []
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=size)
        out += [group[s : s + batch_size] for s in range(0, len(group), batch_size)]
    rng.shuffle(out)
    return out


def collate(
    chunk: list[Example], *, task: str, pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad a list of examples into model inputs plus `labels`."""
    width = max(len(e.input_ids) for e in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    types = torch.zeros((len(chunk), width), dtype=torch.long)
    tags = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
    for n, e in enumerate(chunk):
        length = len(e.input_ids)
        ids[n, :length] = torch.tensor(e.input_ids)
        mask[n, :length] = 1
        if e.token_type_ids is not None:
            types[n, :length] = torch.tensor(e.token_type_ids)
        if task == TOKEN_CLASSIFICATION:
            tags[n, :length] = torch.tensor(e.label)
    batch = {"input_ids": ids, "attention_mask": mask}
    if chunk[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    if task == TOKEN_CLASSIFICATION:
        batch["labels"] = tags
    elif task in (REGRESSION, MULTI_LABEL):
        batch["labels"] = torch.tensor([e.label for e in chunk], dtype=torch.float32)
    else:
        batch["labels"] = torch.tensor([e.label for e in chunk], dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}
