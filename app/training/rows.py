"""Training rows in API.md's format: which task a set of rows is for, and is every row valid.

Uploaded files and inline `examples` go through the same checks, so a row that a dataset
accepts is a row the trainer can use. Rows come back normalised (class labels as strings,
regression labels as floats, duplicate multi-labels dropped); columns this module does not
know are kept as they are (a TREC file's `fine_label`, say).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from app.errors import SwitchyardError, bad_request
from app.tasks import (
    CLASSIFICATION,
    GENERATION,
    MULTI_LABEL,
    REGRESSION,
    TOKEN_CLASSIFICATION,
    canonical_task,
)

MAX_REPORTED_ERRORS = 10
MESSAGE_ROLES = ("system", "user", "assistant")
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
    ) -> None:
        shown = list(errors[:MAX_REPORTED_ERRORS])
        if message is None:
            listed = "; ".join(f"{where} {e.line}: {e.message}" for e in shown)
            more = f" (first {len(shown)} shown)" if len(errors) > len(shown) else ""
            message = f"{len(errors)} invalid row(s){more}: {listed}"
        super().__init__(400, "invalid_dataset", message, param=param)
        self.details = [e.to_dict() for e in shown]
        self.total_errors = len(errors)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """API.md's error body plus `details`, the bad rows."""
        return {"error": {**super().to_dict()["error"], "details": self.details}}


class _RowProblem(ValueError):
    """Raised by a row checker; the message says what is wrong, without the line."""


# ---------------------------------------------------------------- task detection
def row_kind(row: dict[str, Any]) -> str | None:
    """The task a row's columns suggest; `classification` stands for any `label` row."""
    if "tokens" in row or "tags" in row:
        return TOKEN_CLASSIFICATION
    if "messages" in row or "prompt" in row or "completion" in row:
        return GENERATION
    if "labels" in row:
        return MULTI_LABEL
    if "label" in row:
        return CLASSIFICATION
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
    task = kinds.most_common(1)[0][0]
    assert task is not None
    if task == CLASSIFICATION:
        labels = [r.get("label") for r in rows if isinstance(r, dict) and row_kind(r) == task]
        if labels and all(_is_number(x) for x in labels):
            return REGRESSION
    return task


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
    task = canonical_task(task)
    checker = _CHECKERS.get(task)
    if checker is None:
        raise bad_request(
            "invalid_task",
            f"task {task!r} cannot be trained; use one of {list(TRAINABLE_TASKS)}",
            param="task",
        )
    out: list[dict[str, Any]] = []
    errors: list[RowError] = []
    for index, row in enumerate(rows):
        try:
            out.append(_check_row(row, task, checker))
        except _RowProblem as problem:
            errors.append(RowError(_line(lines, index), str(problem)))
    return out, errors


def label_counts(rows: Sequence[dict[str, Any]], task: str) -> dict[str, int]:
    """How often each label (tag, for token classification) occurs, by label name."""
    counts: Counter[str] = Counter()
    for row in rows:
        if task == CLASSIFICATION:
            counts[row["label"]] += 1
        elif task == MULTI_LABEL:
            counts.update(row["labels"])
        elif task == TOKEN_CLASSIFICATION:
            counts.update(row["tags"])
    return dict(sorted(counts.items()))


def derive_labels(rows: Sequence[dict[str, Any]], task: str) -> list[str]:
    """The head's labels: every label in the data, sorted; [] for tasks without classes."""
    return list(label_counts(rows, task))


def _check_row(
    row: Any, task: str, checker: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _RowProblem(f"expected a JSON object, got {type(row).__name__}")
    kind = row_kind(row)
    family = CLASSIFICATION if task == REGRESSION else task
    # A row of no known shape goes to the checker, which names the field it lacks.
    if kind is not None and kind != family:
        raise _RowProblem(f"looks like a {kind} row, but the rows are for {task}")
    try:
        checked = checker(row)
    except _RowProblem as problem:
        if "got nothing" in str(problem):  # a missing field: show what the row does have
            raise _RowProblem(f"{problem} (the row has columns {sorted(row)[:10]})") from None
        raise
    # Unknown columns ride along; nulls are dropped so that "absent" has one spelling.
    return {**{k: v for k, v in row.items() if v is not None}, **checked}


def _line(lines: Sequence[int] | None, index: int) -> int:
    return lines[index] if lines is not None else index + 1


def _is_number(value: Any) -> TypeGuard[float]:
    # bool is an int in Python, but `true` is never a score.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(row: dict[str, Any]) -> dict[str, Any]:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _RowProblem(f"text must be a non-empty string, got {_show(text)}")
    out: dict[str, Any] = {"text": text}
    pair = row.get("text_pair")
    if pair is not None:
        if not isinstance(pair, str) or not pair.strip():
            raise _RowProblem(f"text_pair must be a non-empty string when given, got {_show(pair)}")
        out["text_pair"] = pair
    return out


def _classification(row: dict[str, Any]) -> dict[str, Any]:
    out = _text(row)
    label = row.get("label")
    if isinstance(label, str) and label.strip():
        out["label"] = label
    elif _is_number(label) and math.isfinite(label):
        # Integer class ids (HF exports) become names: 1 and 1.0 both mean class "1".
        out["label"] = str(int(label)) if float(label).is_integer() else str(label)
    else:
        raise _RowProblem(f"label must be a non-empty string (a class name), got {_show(label)}")
    return out


def _regression(row: dict[str, Any]) -> dict[str, Any]:
    out = _text(row)
    label = row.get("label")
    try:
        value = float(label) if _is_number(label) or isinstance(label, str) else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _RowProblem(f"label must be a finite number, got {_show(label)}")
    out["label"] = value
    return out


def _multi_label(row: dict[str, Any]) -> dict[str, Any]:
    out = _text(row)
    labels = row.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise _RowProblem(f"labels must be a list of non-empty strings, got {_show(labels)}")
    out["labels"] = list(dict.fromkeys(labels))
    return out


def _token_classification(row: dict[str, Any]) -> dict[str, Any]:
    tokens, tags = row.get("tokens"), row.get("tags")
    if (
        not isinstance(tokens, list)
        or not tokens
        or not all(isinstance(t, str) and t for t in tokens)
    ):
        raise _RowProblem(
            f"tokens must be a non-empty list of non-empty strings, got {_show(tokens)}"
        )
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise _RowProblem(f"tags must be a list of non-empty strings, got {_show(tags)}")
    if len(tags) != len(tokens):
        raise _RowProblem(f"{len(tokens)} tokens but {len(tags)} tags; they must pair up")
    return {"tokens": tokens, "tags": tags}


def _generation(row: dict[str, Any]) -> dict[str, Any]:
    if "messages" in row:
        if "prompt" in row or "completion" in row:
            raise _RowProblem("give either messages or prompt+completion, not both")
        return {"messages": _messages(row["messages"])}
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, str):
        raise _RowProblem(f"prompt must be a string, got {_show(prompt)}")
    if not isinstance(completion, str) or not completion.strip():
        raise _RowProblem(f"completion must be a non-empty string, got {_show(completion)}")
    return {"prompt": prompt, "completion": completion}


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise _RowProblem(f"messages must be a non-empty list, got {_show(messages)}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _RowProblem(f"messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            raise _RowProblem(
                f"messages[{i}].role must be one of {list(MESSAGE_ROLES)}, got {_show(role)}"
            )
        if not isinstance(content, str):
            raise _RowProblem(f"messages[{i}].content must be a string, got {_show(content)}")
        out.append({"role": role, "content": content})
    # Only assistant turns are learned from; a conversation without one teaches nothing.
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise _RowProblem("messages need at least one non-empty assistant message")
    return out


def _show(value: Any) -> str:
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_CHECKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    CLASSIFICATION: _classification,
    MULTI_LABEL: _multi_label,
    REGRESSION: _regression,
    TOKEN_CLASSIFICATION: _token_classification,
    GENERATION: _generation,
}
TRAINABLE_TASKS = tuple(_CHECKERS)
