"""The validation split held out of the training rows when a job names no validation data.

Stratified so that every class is measured (a 77-label task with a few rows a class would
otherwise leave some classes out of validation), seeded so that the same data always gives
the same split (runs with different hyperparameters stay comparable), and bounded so that
evaluation stays cheap on big datasets.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

from app.tasks import trainable_task

HOLDOUT_FRACTION = 0.1
MAX_HOLDOUT_ROWS = 2000
SPLIT_SEED = 1234
# A class gives up a row for validation only if it keeps this many for training.
_MIN_TRAIN_PER_CLASS = 2

Row = dict[str, Any]


def holdout_split(
    rows: Sequence[Row],
    task: str,
    *,
    fraction: float = HOLDOUT_FRACTION,
    max_rows: int = MAX_HOLDOUT_ROWS,
    seed: int = SPLIT_SEED,
) -> tuple[list[Row], list[Row]]:
    """(train, validation): about `fraction` of the rows, at least one per class when the class
    can spare it, at most `max_rows`; both keep the input order."""
    if len(rows) < 2:
        return list(rows), []
    rate = min(fraction, max_rows / len(rows))
    rng = random.Random(seed)
    strata_of_rows = strata(rows, task)
    shuffled: dict[Hashable, list[int]] = {}
    shares: dict[Hashable, int] = {}
    for key in sorted(strata_of_rows, key=repr):  # sorted: the split must not depend on dict order
        indices = list(strata_of_rows[key])
        rng.shuffle(indices)
        shuffled[key] = indices
        shares[key] = _share(len(indices), rate)
    _trim(shares, max_rows)
    held = {i for key, indices in shuffled.items() for i in indices[: shares[key]]}
    train = [row for i, row in enumerate(rows) if i not in held]
    validation = [row for i, row in enumerate(rows) if i in held]
    return train, validation


def _share(size: int, rate: float) -> int:
    share = round(size * rate)
    if share == 0 and size >= _MIN_TRAIN_PER_CLASS + 1:
        share = 1
    return min(share, max(size - _MIN_TRAIN_PER_CLASS, 0) if size > 1 else 0)


def _trim(shares: dict[Hashable, int], max_rows: int) -> None:
    # Rounding up small classes can overshoot the cap; take back from the largest shares.
    excess = sum(shares.values()) - max_rows
    while excess > 0:
        key = max(shares, key=lambda k: (shares[k], repr(k)))
        shares[key] -= 1
        excess -= 1


def strata(rows: Sequence[Row], task: str) -> dict[Hashable, list[int]]:
    """Row indices by stratum: the label, a multi-label row's rarest label, a score's bin."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, key in enumerate(trainable_task(task).strata(rows)):
        groups[key].append(index)
    return groups


def fold_indices(
    rows: Sequence[Row], task: str, *, folds: int, seed: int = SPLIT_SEED
) -> list[list[int]]:
    """`folds` disjoint sets of row indices covering all rows, each stratum dealt round-robin
    after a seeded shuffle, so every fold sees every class that has `folds` rows or more."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    dealt = 0
    groups = strata(rows, task)
    for key in sorted(groups, key=repr):
        indices = list(groups[key])
        rng.shuffle(indices)
        for index in indices:
            out[dealt % folds].append(index)
            dealt += 1
    return [sorted(fold) for fold in out]
