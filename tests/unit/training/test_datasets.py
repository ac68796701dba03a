"""Dataset uploads: JSONL and CSV parsing, task detection, bad rows by line, limits, storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import Database, open_database
from app.errors import SwitchyardError
from app.training.datasets import DatasetService, InvalidDatasetError

SHARED_DATASETS = Path(__file__).resolve().parents[4] / "shared" / "datasets"


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", max_dataset_bytes=4096, _env_file=None)


@pytest.fixture
def db(cfg: Settings) -> Iterator[Database]:
    database = open_database(cfg)
    yield database
    database.dispose()


@pytest.fixture
def service(db: Database, cfg: Settings) -> DatasetService:
    return DatasetService(db, cfg)


def jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize(
    ("rows", "task", "counts"),
    [
        (
            [
                {"text": "good", "label": "pos"},
                {"text": "bad", "label": "neg"},
                {"text": "ok", "label": "pos"},
            ],
            "classification",
            {"neg": 1, "pos": 2},
        ),
        (
            [{"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": ["y"]}],
            "multi_label_classification",
            {"x": 1, "y": 2},
        ),
        (
            [{"text": "a", "text_pair": "b", "label": 4.2}, {"text": "c", "label": 0}],
            "regression",
            {},
        ),
        (
            [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}],
            "token_classification",
            {"B-ORG": 1, "O": 1},
        ),
        (
            [
                {"prompt": "Q", "completion": "A"},
                {"messages": [{"role": "assistant", "content": "x"}]},
            ],
            "generation",
            {},
        ),
    ],
)
def test_jsonl_upload_detects_each_task(
    service: DatasetService, rows: list[dict[str, Any]], task: str, counts: dict[str, int]
) -> None:
    created = service.create("data.jsonl", jsonl(*rows), name="mine")
    assert created["id"].startswith("ds_") and created["name"] == "mine"
    assert created["format"] == "jsonl" and created["rows"] == len(rows)
    assert created["task"] == task and created["label_counts"] == counts
    assert service.get(created["id"]) == created
    assert len(service.load_rows(created["id"])) == len(rows)


def test_csv_upload_parses_json_list_columns_and_blank_cells(service: DatasetService) -> None:
    data = b'text,text_pair,labels\n"hello, world",,"[""a"", ""b""]"\nbye,there,[]\n'
    created = service.create("multi.csv", data)
    assert created["format"] == "csv" and created["task"] == "multi_label_classification"
    assert created["columns"] == ["text", "labels", "text_pair"]
    assert service.load_rows(created["id"]) == [
        {"text": "hello, world", "labels": ["a", "b"]},
        {"text": "bye", "text_pair": "there", "labels": []},
    ]


def test_csv_labels_are_numbers_only_if_all_of_them_are(service: DatasetService) -> None:
    scores = service.create("s.csv", b"text,label\na,1\nb,2.5\n")
    assert scores["task"] == "regression"
    assert [r["label"] for r in service.load_rows(scores["id"])] == [1.0, 2.5]
    classes = service.create("c.csv", b"text,label\na,1\nb,spam\n")
    assert classes["task"] == "classification"
    assert classes["label_counts"] == {"1": 1, "spam": 1}


def test_csv_token_classification_uses_json_cells(service: DatasetService) -> None:
    data = b'tokens,tags\n"[""EU"", ""rejects""]","[""B-ORG"", ""O""]"\n'
    assert service.create("ner.csv", data)["task"] == "token_classification"


def test_bad_jsonl_rows_are_reported_by_line_number(service: DatasetService) -> None:
    lines = [
        json.dumps({"text": "fine", "label": "a"}),
        "",  # blank lines are skipped but still counted
        "{not json",
        json.dumps({"text": "", "label": "a"}),
        json.dumps(["a list"]),
        json.dumps({"text": "fine", "label": "b"}),
    ]
    with pytest.raises(InvalidDatasetError) as caught:
        service.create("d.jsonl", "\n".join(lines).encode())
    error = caught.value
    assert error.status == 400 and error.code == "invalid_dataset" and error.param == "file"
    assert [d["line"] for d in error.details] == [3, 4, 5]
    assert "not valid JSON" in error.details[0]["message"]
    assert "text must be a non-empty string" in error.details[1]["message"]
    assert "line 3: " in error.message and "line 5: " in error.message
    assert service.list() == []
    assert list((service.root).iterdir()) == []


def test_bad_csv_rows_report_the_line_a_record_starts_on(service: DatasetService) -> None:
    data = b'text,label\n"two\nlines",a\n,b\nc,d,e\nok,"[broken"\n'
    with pytest.raises(InvalidDatasetError) as caught:
        service.create("d.csv", data)
    assert [d["line"] for d in caught.value.details] == [4, 5]
    assert "3 fields, the header has 2" in caught.value.details[1]["message"]


def test_only_the_first_ten_bad_rows_are_listed(service: DatasetService) -> None:
    data = jsonl(*([{"text": "x", "label": "a"}] + [{"text": "x"}] * 30))
    with pytest.raises(InvalidDatasetError) as caught:
        service.create("d.jsonl", data)
    assert len(caught.value.details) == 10 and caught.value.details[0]["line"] == 2
    assert caught.value.message.startswith("30 invalid row(s) (first 10 shown)")


def test_rows_of_another_shape_are_named(service: DatasetService) -> None:
    data = jsonl(
        {"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"tokens": ["a"], "tags": ["O"]}
    )
    with pytest.raises(InvalidDatasetError) as caught:
        service.create("d.jsonl", data)
    assert caught.value.details == [
        {
            "line": 3,
            "message": "looks like a token_classification row, but the rows are for classification",
        }
    ]


def test_size_limit_is_413(service: DatasetService) -> None:
    data = jsonl(*[{"text": "x" * 100, "label": "a"}] * 50)
    with pytest.raises(SwitchyardError) as caught:
        service.create("big.jsonl", data)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        413,
        "payload_too_large",
        "file",
    )
    assert "4096" in caught.value.message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "no rows"),
        (b"\n\n", "no rows"),
        (b"\xff\xfe{", "not UTF-8"),
        (b"text,text\na,b\n", "repeats"),
    ],
)
def test_unusable_files_are_400(service: DatasetService, data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidDatasetError, match=fragment):
        service.create("d.csv" if b"," in data else "d.jsonl", data)


def test_too_many_rows_are_rejected(db: Database, tmp_path: Path) -> None:
    small = Settings(store=tmp_path / "store", max_training_rows=2, _env_file=None)
    service = DatasetService(db, small)
    with pytest.raises(SwitchyardError) as caught:
        service.create("d.jsonl", jsonl(*[{"text": "x", "label": "a"}] * 3))
    assert caught.value.code == "too_many_rows"


def test_stored_file_is_normalised_jsonl_and_delete_removes_it(service: DatasetService) -> None:
    created = service.create(
        "d.jsonl", jsonl({"text": "a", "label": 1}, {"text": "b", "label": "x"})
    )
    path = service.root / f"{created['id']}.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"text": "a", "label": "1"},
        {"text": "b", "label": "x"},
    ]
    assert not [p for p in service.root.iterdir() if p.name.startswith(".tmp-")]
    assert service.delete(created["id"]) == {
        "id": created["id"],
        "object": "dataset",
        "deleted": True,
    }
    assert not path.exists()
    with pytest.raises(SwitchyardError) as caught:
        service.get(created["id"])
    assert (caught.value.status, caught.value.code) == (404, "dataset_not_found")


def test_list_is_newest_first_and_unknown_ids_are_404(service: DatasetService) -> None:
    first = service.create("a.jsonl", jsonl({"text": "a", "label": "x"}))
    second = service.create("b.jsonl", jsonl({"text": "b", "label": "y"}))
    assert [d["id"] for d in service.list()] == [second["id"], first["id"]]
    for bad in ("ds_ffff", "../etc/passwd", "job_1"):
        with pytest.raises(SwitchyardError) as caught:
            service.load_rows(bad, param="training_data")
        assert (caught.value.status, caught.value.param) == (404, "training_data")


def test_leftover_temporary_files_are_swept_at_start(db: Database, cfg: Settings) -> None:
    root = cfg.store / "_datasets"
    root.mkdir(parents=True)
    (root / ".tmp-crashed.jsonl").write_text("{}")
    DatasetService(db, cfg)
    assert not (root / ".tmp-crashed.jsonl").exists()


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="shared datasets are not present")
def test_a_real_dataset_file_uploads(db: Database, tmp_path: Path) -> None:
    cfg = Settings(store=tmp_path / "store", _env_file=None)
    data = (SHARED_DATASETS / "rte" / "dev.jsonl").read_bytes()
    created = DatasetService(db, cfg).create("rte.jsonl", data)
    assert created["task"] == "classification" and created["rows"] == 277
    assert created["columns"] == ["text", "text_pair", "label"]
    assert set(created["label_counts"]) == {"entailment", "not_entailment"}
