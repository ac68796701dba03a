"""Text-only datasets: told apart from labeled ones, the same rows from plain text, JSONL and
CSV, bad rows by line, size limits, nothing stored on a refusal, and bounded memory on a file
far bigger than anything the upload path may hold."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.db import Database, open_database
from app.errors import SwitchyardError
from app.training.corpus_upload import CORPUS_TASK, sniff
from app.training.datasets import DatasetService, InvalidDatasetError

MiB = 1024 * 1024


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return Settings(
        store=tmp_path / "store",
        max_dataset_bytes=4096,
        max_corpus_bytes=64 * MiB,
        max_corpus_document_bytes=4096,
        max_training_rows=2,
        _env_file=None,
    )


@pytest.fixture
def db(cfg: Settings) -> Iterator[Database]:
    database = open_database(cfg)
    yield database
    database.dispose()


@pytest.fixture
def service(db: Database, cfg: Settings) -> DatasetService:
    return DatasetService(db, cfg)


def stored(service: DatasetService, created: dict[str, Any]) -> list[dict[str, Any]]:
    return service.load_rows(created["id"])


def stored_nothing(service: DatasetService) -> bool:
    return service.list() == [] and list(service.root.iterdir()) == []


def as_jsonl(written: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in written).encode()


def as_csv(written: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text"])
    writer.writerows([d] for d in written)
    return out.getvalue().encode()


@pytest.mark.parametrize(
    ("filename", "head", "fmt", "text_only"),
    [
        ("a.txt", b'{"text": "x", "label": "y"}\n', "text", True),  # .txt is always text
        ("a.text", b"text,label\n", "text", True),
        ("a.jsonl", b'{"text": "x"}\n{"text": "y"}\n', "jsonl", True),
        ("a.jsonl", b'{"text": "x"}\n{"text": "y", "label": "z"}\n', "jsonl", False),
        ("a.json", b'{"text": "x"}\nnot json\n', "jsonl", True),  # bad lines do not decide
        ("a.jsonl", b"", "jsonl", False),
        ("a.csv", b"text\nx\n", "csv", True),
        ("a.csv", b"\xef\xbb\xbf text \nx\n", "csv", True),
        ("a.csv", b"text,label\nx,y\n", "csv", False),
        ("blob", b'  {"text": "x"}\n', "jsonl", True),
        ("blob", b"text,label\nx,y\n", "csv", False),
        ("blob", b"text\nx\n", "csv", True),
        ("blob", b"Hello, world\nsecond line\n", "text", True),
        ("notes.md", b"Title,Author\n", "text", True),  # no known column: not a CSV header
        ("blob", b"", "text", True),
    ],
)
def test_sniff_tells_the_format_and_whether_rows_are_text_only(
    filename: str, head: bytes, fmt: str, text_only: bool
) -> None:
    found = sniff(filename, head, whole=True)
    assert (found.format, found.text_only) == (fmt, text_only)


def test_a_cut_last_line_of_the_prefix_does_not_decide() -> None:
    head = b'{"text": "x"}\n{"text": "y", "lab'
    assert sniff("a.jsonl", head, whole=False).text_only
    assert not sniff("a.jsonl", head + b'el": 1}', whole=True).text_only


def test_plain_text_is_stored_as_text_rows_of_the_corpus_task(service: DatasetService) -> None:
    created = service.create("notes.txt", b"first doc\r\n\r\nsecond doc\r\n", name="notes")
    assert created["task"] == CORPUS_TASK == "language_modeling"
    assert (created["format"], created["rows"], created["columns"]) == ("text", 2, ["text"])
    assert created["label_counts"] == {} and created["bytes"] == 25
    assert stored(service, created) == [{"text": "first doc"}, {"text": "second doc"}]
    lines = Path(service.root / f"{created['id']}.jsonl").read_text().splitlines()
    assert lines == ['{"text": "first doc"}', '{"text": "second doc"}']


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("line", ["a1", "a2", "b1"]),
        ("paragraph", ["a1\na2", "b1"]),
        (None, ["a1\na2", "b1"]),  # auto: blank lines cut short blocks
    ],
)
def test_split_chooses_lines_or_paragraphs(
    service: DatasetService, split: str | None, expected: list[str]
) -> None:
    created = service.create("p.txt", b"a1\na2\n\nb1\n", split=split)
    assert [r["text"] for r in stored(service, created)] == expected


def test_split_does_not_change_jsonl_rows(service: DatasetService) -> None:
    created = service.create("p.jsonl", as_jsonl(["a\n\nb"]), split="line")
    assert stored(service, created) == [{"text": "a\n\nb"}]


def test_max_training_rows_does_not_cap_a_corpus(service: DatasetService) -> None:
    created = service.create("many.txt", b"".join(b"doc %d\n" % i for i in range(50)))
    assert created["rows"] == 50  # max_training_rows is 2 here


def test_labeled_files_keep_their_path_and_limit(service: DatasetService) -> None:
    labeled = as_jsonl([]) + b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n'
    assert service.create("l.jsonl", labeled)["task"] == "classification"
    big = b'{"text": "%s", "label": "x"}\n' % (b"z" * 5000)
    with pytest.raises(SwitchyardError) as caught:
        service.create("big.jsonl", big)
    assert caught.value.status == 413
    assert caught.value.message == f"dataset is {len(big)} bytes > max_dataset_bytes 4096"


def test_a_corpus_over_max_corpus_bytes_is_413_and_stores_nothing(
    db: Database, tmp_path: Path
) -> None:
    small = Settings(
        store=tmp_path / "store",
        max_corpus_bytes=2048,
        max_corpus_document_bytes=1024,
        _env_file=None,
    )
    service = DatasetService(db, small)
    data = b"a line of text\n" * 200
    with pytest.raises(SwitchyardError) as caught:
        service.create("big.txt", data)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        413,
        "payload_too_large",
        "file",
    )
    assert caught.value.message == "text-only dataset is 3000 bytes > max_corpus_bytes 2048"
    assert stored_nothing(service)


@pytest.mark.parametrize(
    ("filename", "data", "details"),
    [
        (
            "d.txt",
            b"good\nbad \xff\n\nfine\n",
            [{"line": 2, "message": "not UTF-8 text (byte 5 of the line is 0xff)"}],
        ),
        (
            "d.jsonl",
            b'{"text": "a"}\n{"text": ""}\n{"text": 3}\n[1]\n{"text": "b"\n',
            [
                {"line": 2, "message": "text must be a non-empty string, got ''"},
                {"line": 3, "message": "text must be a non-empty string, got 3"},
                {"line": 4, "message": "expected a JSON object, got list"},
                {
                    "line": 5,
                    "message": "the row is not valid JSON: Expecting ',' delimiter "
                    "at line 1 column 13",
                },
            ],
        ),
        (
            "d.csv",
            b'text\nok\n"two\nlines",extra\nfine\n',
            [{"line": 3, "message": "2 fields, the header has 1"}],
        ),
        (
            "d.csv",
            b'text\nok\n"open quote\n',
            [{"line": 3, "message": "unreadable CSV: unexpected end of data"}],
        ),
        (
            "d.csv",
            b"text\nok\n\xff\nnever read\n",
            [{"line": 3, "message": "not UTF-8 text (byte 1 of the line is 0xff)"}],
        ),
        (
            "d.txt",
            b"ok\n" + b"x" * 5000 + b"\n",
            [{"line": 2, "message": "the line is longer than max_corpus_document_bytes 4096"}],
        ),
    ],
)
def test_bad_rows_are_400_by_line_and_store_nothing(
    service: DatasetService, filename: str, data: bytes, details: list[dict[str, Any]]
) -> None:
    with pytest.raises(InvalidDatasetError) as caught:
        service.create(filename, data)
    assert (caught.value.status, caught.value.param) == (400, "file")
    assert caught.value.details == details
    assert stored_nothing(service)


def test_a_row_with_other_columns_past_the_sniffed_prefix_is_named(
    service: DatasetService,
) -> None:
    head = as_jsonl([f"document {i}" for i in range(5000)])  # well past the 64 KiB sniffed
    data = head + b'{"text": "b", "label": "x"}\n'
    with pytest.raises(InvalidDatasetError) as caught:
        service.create("d.jsonl", data)  # over max_dataset_bytes: read as a corpus
    assert caught.value.details == [
        {
            "line": 5001,
            "message": "rows of a text-only dataset have the one column 'text'; "
            "this has ['label', 'text']",
        }
    ]
    assert stored_nothing(service)


def test_every_bad_row_is_counted_but_ten_are_kept(service: DatasetService) -> None:
    with pytest.raises(InvalidDatasetError) as caught:
        service.create("d.txt", b"ok\n" + b"\xff\n" * 30)
    assert caught.value.message.startswith("30 invalid row(s) (first 10 shown): line 2: ")
    assert [d["line"] for d in caught.value.details] == list(range(2, 12))
    assert caught.value.total_errors == 30


@pytest.mark.parametrize("data", [b"", b"\n \n\t\n", b"\xef\xbb\xbf"])
def test_a_text_file_without_documents_has_no_rows(service: DatasetService, data: bytes) -> None:
    with pytest.raises(InvalidDatasetError, match="the file has no rows"):
        service.create("empty.txt", data)
    assert stored_nothing(service)


def test_an_unknown_split_is_400_before_anything_is_read(service: DatasetService) -> None:
    with pytest.raises(SwitchyardError) as caught:
        service.create("a.txt", b"a\n", split="sentences")
    assert (caught.value.status, caught.value.code) == (400, "invalid_split")
    assert stored_nothing(service)


line_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\n\r\ufeff"),
    min_size=1,
    max_size=20,
).filter(str.strip)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written=st.lists(st.lists(line_text, min_size=1, max_size=3), min_size=1, max_size=6))
def test_jsonl_csv_and_plain_text_of_the_same_documents_store_the_same_rows(
    tmp_path_factory: pytest.TempPathFactory, written: list[list[str]]
) -> None:
    cfg = Settings(store=tmp_path_factory.mktemp("same") / "store", _env_file=None)
    database = open_database(cfg)
    try:
        service = DatasetService(database, cfg)
        paragraphs = ["\n".join(lines) for lines in written]
        plain = "\n\n".join(paragraphs).encode()
        uploads = [
            service.create("p.txt", plain, split="paragraph"),
            service.create("p.jsonl", as_jsonl(paragraphs)),
            service.create("p.csv", as_csv(paragraphs)),
        ]
        assert {u["task"] for u in uploads} == {CORPUS_TASK}
        assert [stored(service, u) for u in uploads] == [[{"text": p} for p in paragraphs]] * 3
        lines = [line for lines in written for line in lines]
        by_line = service.create("l.txt", "\n".join(lines).encode(), split="line")
        assert stored(service, by_line) == stored(
            service, service.create("l.jsonl", as_jsonl(lines))
        )
    finally:
        database.dispose()


# ---------------------------------------------------------------- bounded memory
CORPUS_BYTES = 24 * MiB


def write_corpus(path: Path, fmt: str) -> int:
    """About CORPUS_BYTES of documents, written a chunk at a time."""
    line = "the quick brown fox jumps over the lazy dog " * 40  # long lines: a quick test
    with open(path, "w", encoding="utf-8") as out:
        if fmt == "csv":
            out.write("text\n")
        for i in range(CORPUS_BYTES // (len(line) + 20)):
            doc = f"{i} {line}"
            out.write(json.dumps({"text": doc}) + "\n" if fmt == "jsonl" else doc + "\n")
            if fmt == "paragraph" and i % 4 == 3:
                out.write("\n")
    return path.stat().st_size


@pytest.mark.parametrize("fmt", ["txt", "paragraph", "jsonl", "csv"])
def test_a_large_corpus_is_stored_in_memory_far_below_its_size(
    tmp_path: Path, db: Database, fmt: str
) -> None:
    service = DatasetService(db, Settings(store=tmp_path / "store", _env_file=None))  # defaults
    source = tmp_path / ("corpus.txt" if fmt == "paragraph" else f"corpus.{fmt}")
    size = write_corpus(source, fmt)
    assert size > 20 * MiB
    with open(source, "rb") as stream:
        tracemalloc.start()
        try:
            created = service.upload(source.name, stream)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert created["bytes"] == size and created["task"] == CORPUS_TASK
    assert created["rows"] > 12_000 // (4 if fmt == "paragraph" else 1)
    assert peak < size / 10, f"peak {peak} bytes for a {size}-byte file"


def test_tracemalloc_sees_a_file_read_whole(tmp_path: Path) -> None:
    # The control: holding the file at once is what the bound above would catch.
    source = tmp_path / "corpus.txt"
    size = write_corpus(source, "txt")
    tracemalloc.start()
    try:
        rows = [{"text": line} for line in source.read_text().splitlines()]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows and peak > size
