"""The Task protocols: what the rest of the service may ask of a task, and nothing else.

Three layers, because not every task does everything. Every `Task` is served on some base
kinds and reads some request parameters. A `TrainableTask` also checks and normalises training
rows, names their labels and splits them into validation strata. A `HeadTask` is trained and
served through a linear head on the encoder: it encodes rows into `Example`s, collates labels,
has an objective (loss, head fit) and metrics, and decodes head outputs to pipeline shapes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from app.errors import bad_request

IGNORE = -100  # label of positions that carry no loss (prompt, padding, non-first sub-tokens)
Row = dict[str, Any]
Pairs = list[tuple[torch.Tensor, torch.Tensor]]  # batches of (logits, gold labels)
# Head outputs to decode: [rows, outputs] (pooled), or one [tokens, outputs] a row (tokens).
Outputs = torch.Tensor | list[torch.Tensor]
# transformers' `config.problem_type` values
ProblemType = Literal["regression", "single_label_classification", "multi_label_classification"]


class Readout(Enum):
    """Where a task reads its answer from the base's forward."""

    POOLED = "pooled"  # one vector a row, through a head (sequence-level tasks)
    TOKENS = "tokens"  # every token, through a head (token classification)
    EMBEDDING = "embedding"  # the pooled vector itself, no head
    TEXT = "text"  # the causal LM's next tokens
    MASKED = "masked"  # an encoder's MLM head over every token (fill-mask)


class RowProblem(ValueError):
    """Raised by a row checker; the message says what is wrong, without the line."""


@dataclass
class Example:
    """One tokenized training row."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    label: Any  # int, float, list[float] (multi-hot) or list[int] (per token)


class ServedRow(Protocol):
    """What decoding reads of a tokenized request input (app.runtime.engine.EncodedRow)."""

    text: str
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]


class Objective(Protocol):
    """A head's loss and how a linear head is fitted to frozen features for it."""

    label_dtype: torch.dtype
    problem_type: ProblemType | None  # what the training view's config says (None: inferred)

    def loss(self, logits: torch.Tensor, gold: torch.Tensor, *, reduction: str) -> torch.Tensor:
        """The training loss (`reduction` "mean" or "sum")."""
        ...

    def count(self, gold: torch.Tensor) -> int:
        """How many terms a summed loss over `gold` has."""
        ...

    def separable(self, y: np.ndarray) -> bool:
        """Whether targets `y` give a head something to learn."""
        ...

    def fit(self, x: np.ndarray, y: np.ndarray, *, rows: int, c: float, tick: Any) -> Any:
        """(weight [rows, features], bias [rows]) fitted on standardised features."""
        ...

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Higher is better: how well held-out logits match `y`."""
        ...


class Calibration(Protocol):
    """An objective whose head gives probabilities that one temperature can calibrate."""

    def loss(self, logits: torch.Tensor, gold: torch.Tensor, *, reduction: str) -> torch.Tensor:
        """The negative log-likelihood the temperature minimises."""
        ...

    def confidences(
        self, logits: torch.Tensor, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities [n, choices] and the gold choice of each of the n questions."""
        ...


@runtime_checkable
class Task(Protocol):
    """Every task: its names, the bases that serve it, what a request may set."""

    name: str
    order: int  # its place in listings (health, error messages)
    aliases: tuple[str, ...]
    kinds: frozenset[str]  # base kinds ("encoder", "decoder") it runs on
    readout: Readout
    parameters: frozenset[str]  # request `parameters` it reads
    methods: tuple[str, ...] | None  # the only methods that train it; None: any
    single_label: bool  # exactly one class a row (what contrastive pairs need)

    def head_size(self, labels: list[str]) -> int:
        """Outputs of the head; 0 for tasks without one; 400 for too few labels."""
        ...


@runtime_checkable
class TrainableTask(Task, Protocol):
    """A task with training rows."""

    family: str  # the row shape; regression rows are shaped like classification rows
    columns: tuple[str, ...]  # columns that mark a row of this family
    detect_rank: int  # lower wins when a row has the columns of several families
    primary_metric: str

    def check_row(self, row: Row) -> Row:
        """The row's fields this task reads, normalised; RowProblem says what is wrong."""
        ...

    def claims(self, rows: Sequence[Row]) -> bool:
        """Whether rows of its family are this task rather than the family's own."""
        ...

    def row_labels(self, row: Row) -> list[str]:
        """The label names a normalised row carries ([] for tasks without classes)."""
        ...

    def strata(self, rows: Sequence[Row]) -> list[Hashable]:
        """Each row's validation stratum, so every class (or score range) is measured."""
        ...


@runtime_checkable
class HeadTask(TrainableTask, Protocol):
    """A task served and trained through a linear head on the encoder."""

    objective: Objective
    calibration: Calibration | None  # None: outputs that are not probabilities

    def encode(
        self,
        row: Row,
        tokenizer: PreTrainedTokenizerBase,
        *,
        index: dict[str, int],
        max_length: int,
    ) -> Example:
        """A normalised row tokenized, its label encoded by `index` (label -> head row)."""
        ...

    def token_count(self, row: Row, tokenizer: PreTrainedTokenizerBase) -> int:
        """Untruncated tokens of a row."""
        ...

    def collate_labels(self, chunk: list[Example], width: int) -> torch.Tensor:
        """The labels of a padded batch `width` tokens wide."""
        ...

    def metrics(self, pairs: Pairs, labels: list[str]) -> dict[str, float]:
        """Validation metrics from batches of (logits, gold)."""
        ...

    def decode(
        self,
        logits: Outputs,
        *,
        labels: list[str],
        params: dict[str, Any],
        rows: Sequence[ServedRow],
    ) -> list[Any]:
        """Pipeline-shaped outputs of the head's logits for `rows`."""
        ...


class Unlabeled:
    """What the text-only trainable tasks share: no classes, no head of their own, one
    stratum, and never detected from rows (a job names them)."""

    def claims(self, rows: Sequence[Row]) -> bool:
        """Never detected: the task is named."""
        return False

    def row_labels(self, row: Row) -> list[str]:
        """Text has no classes."""
        return []

    def head_size(self, labels: list[str]) -> int:
        """No classification head: the LM head (or a kept MLM head) is the base's own."""
        return 0

    def strata(self, rows: Sequence[Row]) -> list[Hashable]:
        """One stratum."""
        return [None] * len(rows)


# ---------------------------------------------------------------- shared row helpers
def show(value: Any) -> str:
    """A value as an error message quotes it: short, `nothing` for a missing one."""
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value: Any) -> TypeGuard[float]:
    """A JSON number; bool is an int in Python, but `true` is never a score."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def need_labels(task: str, labels: list[str], minimum: int) -> int:
    """`len(labels)` head rows; 400 `invalid_labels` below `minimum`."""
    if len(labels) < minimum:
        raise bad_request(
            "invalid_labels",
            f"task {task!r} needs at least {minimum} labels, got {len(labels)}",
            param="labels",
        )
    return len(labels)


def check_text(row: Row) -> Row:
    """`text` (and `text_pair`, when given) as non-empty strings."""
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RowProblem(f"text must be a non-empty string, got {show(text)}")
    out: Row = {"text": text}
    pair = row.get("text_pair")
    if pair is not None:
        if not isinstance(pair, str) or not pair.strip():
            raise RowProblem(f"text_pair must be a non-empty string when given, got {show(pair)}")
        out["text_pair"] = pair
    return out
