"""Row validation, task detection, label derivation and the held-out validation split."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from app.errors import SwitchyardError
from app.training.rows import (
    MAX_REPORTED_ERRORS,
    InvalidDatasetError,
    derive_labels,
    detect_task,
    label_counts,
    validate_rows,
)
from app.training.split import holdout_split

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    ("rows", "task"),
    [
        ([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}], "classification"),
        ([{"text": "a", "text_pair": "b", "label": "entailment"}], "classification"),
        (
            [{"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": []}],
            "multi_label_classification",
        ),
        ([{"text": "a", "text_pair": "b", "label": 3.8}, {"text": "c", "label": 1}], "regression"),
        ([{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}], "token_classification"),
        ([{"prompt": "2+2=", "completion": "4"}], "generation"),
        ([{"messages": CHAT}], "generation"),
    ],
)
def test_detect_task_from_row_shapes(rows: list[dict[str, Any]], task: str) -> None:
    assert detect_task(rows) == task
    assert len(validate_rows(rows, task)) == len(rows)


def test_mixed_string_and_number_labels_are_classification() -> None:
    rows = [{"text": "a", "label": "spam"}, {"text": "b", "label": 1}]
    assert detect_task(rows) == "classification"
    assert [r["label"] for r in validate_rows(rows, "classification")] == ["spam", "1"]


def test_rows_are_normalised_per_task() -> None:
    assert validate_rows([{"text": "a", "label": 2.0}], "classification")[0]["label"] == "2"
    assert validate_rows([{"text": "a", "label": "3.5"}], "regression")[0]["label"] == 3.5
    multi = validate_rows([{"text": "a", "labels": ["x", "y", "x"]}], "multi_label")
    assert multi[0]["labels"] == ["x", "y"]
    kept = validate_rows(
        [{"text": "a", "label": "x", "fine_label": "x:y", "text_pair": None}], "classification"
    )
    assert kept == [{"text": "a", "label": "x", "fine_label": "x:y"}]


@pytest.mark.parametrize(
    ("row", "task", "fragment"),
    [
        ({"text": "", "label": "x"}, "classification", "text must be a non-empty string"),
        ({"text": "a"}, "classification", "label must be a non-empty string"),
        ({"text": "a", "label": True}, "classification", "label must be"),
        ({"text": "a", "label": "high"}, "regression", "label must be a finite number"),
        ({"text": "a", "label": float("nan")}, "regression", "finite number"),
        ({"text": "a", "labels": "x"}, "multi_label_classification", "labels must be a list"),
        ({"tokens": ["a", "b"], "tags": ["O"]}, "token_classification", "2 tokens but 1 tags"),
        ({"tokens": [], "tags": []}, "token_classification", "tokens must be a non-empty list"),
        ({"prompt": "p", "completion": ""}, "generation", "completion must be a non-empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "generation", "assistant message"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "generation", "role must be one of"),
        (
            {"tokens": ["a"], "tags": ["O"]},
            "classification",
            "looks like a token_classification row",
        ),
        ("not an object", "classification", "expected a JSON object"),
    ],
)
def test_bad_rows_say_what_is_wrong(row: Any, task: str, fragment: str) -> None:
    good = {"classification": {"text": "ok", "label": "x"}}.get(task)
    rows = [good, row] if good else [row]
    with pytest.raises(InvalidDatasetError) as caught:
        validate_rows(rows, task)
    error = caught.value
    assert error.status == 400 and error.code == "invalid_dataset" and error.param == "examples"
    assert error.details == [{"line": len(rows), "message": error.details[0]["message"]}]
    assert fragment in error.details[0]["message"]
    assert f"row {len(rows)}: " in error.message


def test_at_most_ten_bad_rows_are_listed_but_all_are_counted() -> None:
    rows = [{"text": "", "label": "x"}] * 25
    with pytest.raises(InvalidDatasetError) as caught:
        validate_rows(rows, "classification", lines=list(range(2, 27)), where="line")
    error = caught.value
    assert len(error.details) == MAX_REPORTED_ERRORS == 10
    assert [d["line"] for d in error.details] == list(range(2, 12))
    assert error.total_errors == 25
    assert error.message.startswith("25 invalid row(s) (first 10 shown): line 2: ")
    body = error.to_dict()["error"]
    assert body["code"] == "invalid_dataset" and body["details"] == error.details


def test_empty_rows_and_untrainable_tasks_are_rejected() -> None:
    with pytest.raises(InvalidDatasetError, match="no rows"):
        validate_rows([], "classification")
    with pytest.raises(SwitchyardError) as caught:
        validate_rows([{"text": "a"}], "embeddings")
    assert caught.value.code == "invalid_task"


def test_a_misnamed_label_column_is_pointed_out() -> None:
    with pytest.raises(InvalidDatasetError) as caught:
        detect_task([{"text": "fine", "sentiment": "pos"}])
    assert "rename the label column (sentiment?)" in caught.value.details[0]["message"]
    with pytest.raises(InvalidDatasetError) as missing:
        validate_rows([{"text": "fine", "sentiment": "pos"}], "classification")
    assert "the row has columns ['sentiment', 'text']" in missing.value.details[0]["message"]


def test_labels_are_derived_sorted_with_counts() -> None:
    rows = [{"text": "a", "label": "b"}, {"text": "a", "label": "a"}, {"text": "a", "label": "b"}]
    assert label_counts(rows, "classification") == {"a": 1, "b": 2}
    assert derive_labels(rows, "classification") == ["a", "b"]
    tokens = [{"tokens": ["x", "y"], "tags": ["O", "B-PER"]}]
    assert derive_labels(tokens, "token_classification") == ["B-PER", "O"]
    assert derive_labels([{"text": "a", "label": 1.0}], "regression") == []


# ---------------------------------------------------------------- the split
def _classes(**sizes: int) -> list[dict[str, Any]]:
    return [
        {"text": f"{label} {i}", "label": label} for label, n in sizes.items() for i in range(n)
    ]


def test_split_is_stratified_about_ten_percent_and_deterministic() -> None:
    rows = _classes(a=200, b=50, c=3, d=2, e=1)
    train, validation = holdout_split(rows, "classification")
    held = Counter(r["label"] for r in validation)
    assert held == {"a": 20, "b": 5, "c": 1}  # d and e cannot spare a row
    assert len(train) + len(validation) == len(rows)
    assert {r["label"] for r in train} == {"a", "b", "c", "d", "e"}
    assert holdout_split(rows, "classification") == (train, validation)


def test_split_takes_one_per_class_when_ten_percent_rounds_to_zero() -> None:
    rows = _classes(**{f"intent{i}": 8 for i in range(77)})
    _, validation = holdout_split(rows, "classification")
    assert Counter(r["label"] for r in validation) == {f"intent{i}": 1 for i in range(77)}


def test_split_is_capped() -> None:
    rows = _classes(a=30_000, b=10_000)
    _, validation = holdout_split(rows, "classification")
    assert len(validation) == 2000
    assert Counter(r["label"] for r in validation) == {"a": 1500, "b": 500}


def test_split_of_regression_covers_the_range_and_tiny_sets_hold_nothing() -> None:
    rows = [{"text": str(i), "label": float(i)} for i in range(100)]
    _, validation = holdout_split(rows, "regression")
    scores = sorted(r["label"] for r in validation)
    assert len(scores) == 10 and scores[0] < 10 and scores[-1] >= 90
    assert holdout_split([{"prompt": "p", "completion": "c"}] * 2, "generation")[1] == []
    train, validation = holdout_split(_classes(a=3, b=3), "classification", max_rows=1)
    assert len(validation) == 1 and len(train) == 5


def test_multi_label_split_reaches_rare_labels() -> None:
    rows = [{"text": str(i), "labels": ["common"]} for i in range(60)]
    rows += [{"text": f"r{i}", "labels": ["common", "rare"]} for i in range(5)]
    _, validation = holdout_split(rows, "multi_label_classification")
    assert any("rare" in r["labels"] for r in validation)
