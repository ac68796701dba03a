"""Length-grouped batches: every example exactly once an epoch, padded only to its batch."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.training.encoding import Example, batch_order, collate


def _examples(lengths: list[int]) -> list[Example]:
    return [Example(list(range(1, n + 1)), None, n % 2) for n in lengths]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=300),
    batch_size=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_example_once_per_epoch_and_batches_padded_to_their_longest(
    lengths: list[int], batch_size: int, seed: int
) -> None:
    examples = _examples(lengths)
    order = batch_order(examples, batch_size=batch_size, shuffle=True, seed=seed)
    assert sorted(i for chunk in order for i in chunk) == list(range(len(examples)))
    assert all(1 <= len(chunk) <= batch_size for chunk in order)
    assert sum(len(chunk) < batch_size for chunk in order) <= -(-len(lengths) // (50 * batch_size))
    for chunk in order[:5]:
        batch = collate(
            [examples[i] for i in chunk],
            task="classification",
            pad_id=0,
            device=torch.device("cpu"),
        )
        width = max(lengths[i] for i in chunk)
        assert tuple(batch["input_ids"].shape) == (len(chunk), width)
        assert batch["attention_mask"].sum(dim=1).tolist() == [lengths[i] for i in chunk]
        assert batch["labels"].shape[0] == len(chunk)


def test_grouping_cuts_padding_against_shuffled_batches() -> None:
    lengths = [4 + (n * 37) % 60 for n in range(640)]
    examples = _examples(lengths)
    grouped = batch_order(examples, batch_size=32, shuffle=True, seed=1)
    padded = sum(len(c) * max(lengths[i] for i in c) for c in grouped)
    plain = sum(32 * max(lengths[s : s + 32]) for s in range(0, 640, 32))
    assert padded < 0.6 * plain
    assert batch_order(examples, batch_size=32, shuffle=True, seed=1) == grouped  # seeded
    assert batch_order(examples, batch_size=32, shuffle=True, seed=2) != grouped
