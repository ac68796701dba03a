"""Rows to tensors per task: tokenization, label encoding, padding into batches.

What is task-specific (tokenizing a row, encoding and collating its label) is the task's
(app/tasks); this module batches: length-grouped order, padding, devices.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.tasks import head_task
from app.tasks.base import IGNORE, Example

__all__ = ["IGNORE", "Example", "batch_order", "batches", "collate", "encode_rows", "token_lengths"]

_GROUP_SPAN = 50  # batches sorted together by length


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
    encode = head_task(task).encode
    return [encode(row, tokenizer, index=index, max_length=max_length) for row in rows]


def token_lengths(
    rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, *, task: str
) -> list[int]:
    """Untruncated token counts of a sample of rows, to pick max_length from the data."""
    count = head_task(task).token_count
    return [count(row, tokenizer) for row in rows[:2000]]


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
    for n, e in enumerate(chunk):
        length = len(e.input_ids)
        ids[n, :length] = torch.tensor(e.input_ids)
        mask[n, :length] = 1
        if e.token_type_ids is not None:
            types[n, :length] = torch.tensor(e.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if chunk[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    batch["labels"] = head_task(task).collate_labels(chunk, width)
    return {k: v.to(device) for k, v in batch.items()}
