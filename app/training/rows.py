"""Training rows in API.md's format: which task a set of rows is for, and is every row valid.

Uploaded files and inline `examples` go through the same checks, so a row that a dataset
accepts is a row the trainer can use. Rows come back normalised (class labels as strings,
regression labels as floats, duplicate multi-labels dropped); columns this module does not
know are kept as they are (a TREC file's `fine_label`, say).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import SwitchyardError
from app.tasks import TRAINABLE, trainable_task
from app.tasks.base import RowProblem, TrainableTask

MAX_REPORTED_ERRORS = 10
_SHAPES = "text+label, text+labels, tokens+tags, prompt+completion or messages"


@dataclass(frozen=True)
class RowError:
    """What is wrong with one row; `line` is 1-based (file line, or position in `examples`)."""

    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form returned in the error's `details`."""
        return {"line": self.line, "message": self.message}


class InvalidDatasetError(SwitchyardError):
    """A 400 `invalid_dataset` that names the first bad rows, also as a structured list.

    `details` holds at most MAX_REPORTED_ERRORS `{"line", "message"}` entries; `to_dict`
    includes them in the error body so that the API handler returns them unchanged.
    """

    def __init__(
        self,
        errors: Sequence[RowError],
        *,
        param: str | None,
        where: str = "line",
        message: str | None = None,
        total: int | None = None,
    ) -> None:
        # `total`: how many errors there were when `errors` holds only the first of them (a
        # streamed file keeps no more than it reports).
        total = len(errors) if total is None else max(total, len(errors))
        shown = list(errors[:MAX_REPORTED_ERRORS])
        if message is None:
            listed = "; ".join(f"{where} {e.line}: {e.message}" for e in shown)
            more = f" (first {len(shown)} shown)" if total > len(shown) else ""
            message = f"{total} invalid row(s){more}: {listed}"
        super().__init__(400, "invalid_dataset", message, param=param)
        self.details = [e.to_dict() for e in shown]
        self.total_errors = total

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """API.md's error body plus `details`, the bad rows."""
        return {"error": {**super().to_dict()["error"], "details": self.details}}


# ---------------------------------------------------------------- task detection
def row_kind(row: dict[str, Any]) -> str | None:
    """The row family a row's columns suggest; `classification` stands for any `label` row."""
    for task in _FAMILIES:
        if any(column in row for column in task.columns):
            return task.name
    return None


def detect_task(rows: Sequence[Any], lines: Sequence[int] | None = None) -> str:
    """The task most rows are shaped for; `label` rows are regression if every label is a number."""
    kinds = Counter(row_kind(r) for r in rows if isinstance(r, dict))
    kinds.pop(None, None)
    if not kinds:
        errors = [
            RowError(_line(lines, i), _unknown_columns(rows[i]))
            for i in range(min(len(rows), MAX_REPORTED_ERRORS))
        ]
        raise InvalidDatasetError(errors, param="file")
    # most_common keeps first-seen order among ties, so a file's first row breaks ties.
    family = kinds.most_common(1)[0][0]
    assert family is not None
    members = [r for r in rows if isinstance(r, dict) and row_kind(r) == family]
    variants = (t for t in TRAINABLE.values() if t.family == family and t.name != family)
    return next((t.name for t in variants if t.claims(members)), family)


def _unknown_columns(row: Any) -> str:
    """Say which columns a row has, so that a misnamed label column is easy to spot."""
    columns = sorted(row) if isinstance(row, dict) else []
    if "text" in columns:
        others = [c for c in columns if c not in ("text", "text_pair")]
        hint = f"; rename the label column ({', '.join(others)}?)" if others else ""
        return (
            f"no label column: the row has {columns}, a label goes in 'label' "
            f"(or 'labels', a list, for multi-label){hint}"
        )
    return f"no known columns (the row has {columns[:10]}); expected {_SHAPES}"


# ---------------------------------------------------------------- validation
def validate_rows(
    rows: Sequence[Any],
    task: str,
    *,
    param: str = "examples",
    lines: Sequence[int] | None = None,
    where: str = "row",
) -> list[dict[str, Any]]:
    """Check every row for `task` and return them normalised.

    Raises InvalidDatasetError naming the first bad rows; `lines` maps row i to the number
    reported (file lines for uploads, 1-based positions in `examples` otherwise).
    """
    if not rows:
        raise InvalidDatasetError([], param=param, message="there are no rows")
    out, errors = check_rows(rows, task, lines=lines)
    if errors:
        raise InvalidDatasetError(errors, param=param, where=where)
    return out


def check_rows(
    rows: Sequence[Any], task: str, *, lines: Sequence[int] | None = None
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """The valid rows, normalised, and what is wrong with the others."""
    checker = trainable_task(task)
    out: list[dict[str, Any]] = []
    errors: list[RowError] = []
    for index, row in enumerate(rows):
        try:
            out.append(_check_row(row, checker))
        except RowProblem as problem:
            errors.append(RowError(_line(lines, index), str(problem)))
    return out, errors


def label_counts(rows: Sequence[dict[str, Any]], task: str) -> dict[str, int]:
    """How often each label (tag, for token classification) occurs, by label name."""
    counts: Counter[str] = Counter()
    of = trainable_task(task).row_labels
    for row in rows:
        counts.update(of(row))
    return dict(sorted(counts.items()))


def derive_labels(rows: Sequence[dict[str, Any]], task: str) -> list[str]:
    """The head's labels: every label in the data, sorted; [] for tasks without classes."""
    return list(label_counts(rows, task))


def _check_row(row: Any, task: TrainableTask) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RowProblem(f"expected a JSON object, got {type(row).__name__}")
    kind = row_kind(row)
    # A row of no known shape goes to the checker, which names the field it lacks.
    if kind is not None and kind != task.family:
        raise RowProblem(f"looks like a {kind} row, but the rows are for {task.name}")
    try:
        checked = task.check_row(row)
    except RowProblem as problem:
        if "got nothing" in str(problem):  # a missing field: show what the row does have
            raise RowProblem(f"{problem} (the row has columns {sorted(row)[:10]})") from None
        raise
    # Unknown columns ride along; nulls are dropped so that "absent" has one spelling.
    return {**{k: v for k, v in row.items() if v is not None}, **checked}


def _line(lines: Sequence[int] | None, index: int) -> int:
    return lines[index] if lines is not None else index + 1


# Families in the order their columns win: a row with `tokens` and `label` is a token row.
_FAMILIES = sorted(
    (t for t in TRAINABLE.values() if t.family == t.name), key=lambda t: t.detect_rank
)
