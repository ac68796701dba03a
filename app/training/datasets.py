"""Uploaded datasets: JSONL, CSV or plain text in, validated row by row, stored as normalised
JSONL.

A dataset is accepted whole or not at all: every bad row is found (the first ten are
reported by line number) before anything is written. The rows file is written atomically
under `<store>/_datasets/`, the catalog row after it, so a listed dataset always has its file.
Labeled files are parsed here, in memory; text-only files (unlabeled corpora) stream through
`app.training.corpus_upload` instead.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from app.config import Settings
from app.db import Database, Dataset, iso
from app.errors import SwitchyardError, bad_request, not_found
from app.tasks import CLASSIFICATION
from app.training.corpus_upload import (
    CORPUS_TASK,
    TEXT,
    Sniffed,
    check_size,
    sniff,
    store_corpus,
)
from app.training.rows import (
    InvalidDatasetError,
    RowError,
    check_rows,
    detect_task,
    label_counts,
    validate_rows,
)
from app.training.textfile import SNIFF_BYTES, TMP_PREFIX, atomic_writer
from app.untrusted import check_text, check_tree, load_json

__all__ = ["DatasetService", "InvalidDatasetError", "ParsedFile", "parse_file", "validate_rows"]

FORMATS = ("jsonl", "csv", "text")
# CSV cells that hold JSON lists, since a CSV cell cannot hold a list otherwise.
JSON_COLUMNS = ("labels", "tokens", "tags", "messages")
_ID_PATTERN = re.compile(r"ds_[0-9a-f]{1,64}")
_MAX_NAME = 256


@dataclass
class ParsedFile:
    """Rows as read from a file, before validation, with the line each started on."""

    format: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def add(self, line: int, row: dict[str, Any]) -> None:
        """Keep a row and note its new columns, in order of first appearance."""
        self.rows.append(row)
        self.lines.append(line)
        for key in row:
            if key not in self._seen:
                self._seen.add(key)
                self.columns.append(key)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.columns)


def parse_file(filename: str, data: bytes, *, fmt: str | None = None) -> ParsedFile:
    """Read JSONL or CSV (`fmt`, else chosen by extension, else by the first character)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDatasetError(
            [], param="file", message=f"the file is not UTF-8 text (byte {exc.start})"
        ) from exc
    fmt = fmt or detect_format(filename, text)
    return _parse_jsonl(text) if fmt == "jsonl" else _parse_csv(text)


def detect_format(filename: str, text: str) -> str:
    """`jsonl` or `csv`: the extension decides; without a known one, a leading `{` means JSONL."""
    suffix = Path(filename).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def _parse_jsonl(text: str) -> ParsedFile:
    parsed = ParsedFile("jsonl")
    # Only \n ends a JSONL line: str.splitlines would also split at U+2028 and other breaks
    # that JSON allows raw inside a string, cutting a valid row in two.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, say) are not rows
        try:
            row = load_json(line, what="the row", param="file")
        except SwitchyardError as exc:
            parsed.errors.append(RowError(number, exc.message))
            continue
        if not isinstance(row, dict):
            parsed.errors.append(
                RowError(number, f"expected a JSON object, got {type(row).__name__}")
            )
            continue
        parsed.add(number, row)
    return parsed


def _parse_csv(text: str) -> ParsedFile:
    parsed = ParsedFile("csv")
    # strict: a quote left open at the end of the file is an error, not the rest of the file
    # silently merged into one cell.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
    except csv.Error as exc:
        raise InvalidDatasetError(
            [RowError(1, f"unreadable CSV header: {exc}")], param="file"
        ) from exc
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if not header or "" in header or duplicates:
        problem = f"repeats columns {duplicates}" if duplicates else "has an empty column name"
        raise InvalidDatasetError([RowError(1, f"the header {problem}")], param="file")
    end = reader.line_num
    while True:
        start = end + 1  # a quoted cell may span lines: report where the record starts
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            parsed.errors.append(RowError(start, f"unreadable CSV: {exc}"))
            break
        end = reader.line_num
        if record and any(cell.strip() for cell in record):
            try:
                _add_csv_record(parsed, header, record, start)
            except SwitchyardError as exc:
                parsed.errors.append(RowError(start, exc.message))
    _numeric_labels(parsed.rows)
    return parsed


def _add_csv_record(parsed: ParsedFile, header: list[str], record: list[str], line: int) -> None:
    if len(record) > len(header):
        parsed.errors.append(RowError(line, f"{len(record)} fields, the header has {len(header)}"))
        return
    # An empty cell is an absent value, so an optional text_pair column may be left blank.
    row: dict[str, Any] = {h: v for h, v in zip(header, record, strict=False) if v != ""}
    check_tree(row, param="the row")
    for column in JSON_COLUMNS:
        if column in row:
            try:
                row[column] = load_json(row[column], what=f"cell {column}", param="file")
            except SwitchyardError as exc:
                hint = f'{column} must be a JSON list like ["a", "b"], got {row[column][:40]!r}'
                parsed.errors.append(RowError(line, f"{hint}: {exc.message}"))
                return
    parsed.add(line, row)


def _numeric_labels(rows: list[dict[str, Any]]) -> None:
    # CSV has no types: labels are numbers (regression) only when every one of them parses,
    # so a class named "1" among "spam"/"ham" stays a class name.
    values = [_as_float(row["label"]) for row in rows if "label" in row]
    if values and all(v is not None for v in values):
        for row in rows:
            if "label" in row:
                row["label"] = _as_float(row["label"])


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class DatasetService:
    """Datasets in the catalog, their normalised rows under `<store>/_datasets/`."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.root = (settings.store / "_datasets").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def create(
        self, filename: str, data: bytes, name: str | None = None, *, split: str | None = None
    ) -> dict[str, Any]:
        """Validate an uploaded file held in memory and store it; see `upload`."""
        return self.upload(filename, io.BytesIO(data), name=name, split=split)

    def upload(
        self, filename: str, stream: BinaryIO, *, name: str | None = None, split: str | None = None
    ) -> dict[str, Any]:
        """Validate an uploaded file and store it; returns the dataset's JSON.

        `stream` (seekable: an upload's spooled file) is read from its start. A text-only file
        streams through validation into the store in bounded memory (up to max_corpus_bytes,
        cut into documents by `split` when it is plain text); a labeled one is read whole (up
        to max_dataset_bytes).
        """
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
        prefix = stream.read(SNIFF_BYTES)
        check_text(filename or "", param="file")
        filename = Path(filename or "dataset").name[:_MAX_NAME] or "dataset"
        name = _check_name(name, default=Path(filename).stem or filename)
        sniffed = sniff(filename, prefix, whole=len(prefix) >= size, split=split)
        check_size(size, text_only=sniffed.text_only, settings=self.settings)
        stream.seek(0)
        dataset_id = f"ds_{secrets.token_hex(12)}"
        path = self.root / f"{dataset_id}.jsonl"
        store = self._store_corpus if sniffed.text_only else self._store_labeled
        record = store(stream, sniffed, path)
        record.id, record.name, record.filename, record.bytes = dataset_id, name, filename, size
        try:
            with self.db.session() as session:
                session.add(record)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return _to_json(record)

    def get(self, dataset_id: str, *, param: str = "id") -> dict[str, Any]:
        """One dataset's JSON; 404 when unknown."""
        return _to_json(self._record(dataset_id, param))

    def delete(self, dataset_id: str) -> dict[str, Any]:
        """Remove a dataset and its file."""
        with self.db.session() as session:
            record = session.get(Dataset, self._checked_id(dataset_id, "id"))
            if record is None:
                raise _missing(dataset_id, "id")
            session.delete(record)
        # The catalog row goes first so nothing lists a dataset whose file is half gone.
        Path(record.path).unlink(missing_ok=True)
        return {"id": dataset_id, "object": "dataset", "deleted": True}

    def path_of(self, dataset_id: str, *, param: str = "id") -> Path:
        """Where a dataset's normalised rows are stored (one JSON row a line), for readers
        that stream them; 404 when unknown."""
        return Path(self._record(dataset_id, param).path)

    def load_rows(self, dataset_id: str, *, param: str = "id") -> builtins.list[dict[str, Any]]:
        """The stored, normalised rows of a dataset."""
        record = self._record(dataset_id, param)
        try:
            with open(record.path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except (OSError, ValueError) as exc:
            # str(exc) of an OSError carries the file's absolute path; the reason alone does not.
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise SwitchyardError(
                500,
                "dataset_corrupted",
                f"rows of dataset {dataset_id} are unreadable: {reason or type(exc).__name__}",
                param=param,
            ) from exc

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every dataset, newest first."""
        with self.db.session() as session:
            records = session.scalars(
                select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id)
            ).all()
        return [_to_json(r) for r in records]

    # ---------------------------------------------------------------- helpers
    def _store_labeled(self, stream: BinaryIO, sniffed: Sniffed, path: Path) -> Dataset:
        parsed = parse_file(path.name, stream.read(), fmt=sniffed.format)
        task, rows = self._validate(parsed)
        _write_jsonl(path, rows)
        return Dataset(
            format=parsed.format,
            rows=len(rows),
            columns=parsed.columns,
            task=task,
            label_counts=label_counts(rows, task),
            path=str(path),
        )

    def _store_corpus(self, stream: BinaryIO, sniffed: Sniffed, path: Path) -> Dataset:
        # No max_training_rows here: a corpus's rows are bounded by max_corpus_bytes.
        limit = self.settings.max_corpus_document_bytes
        rows = store_corpus(
            stream, fmt=sniffed.format, split=sniffed.split, path=path, max_document_bytes=limit
        )
        return Dataset(
            format=sniffed.format,
            rows=rows,
            columns=[TEXT],
            task=CORPUS_TASK,
            label_counts={},
            path=str(path),
        )

    def _validate(self, parsed: ParsedFile) -> tuple[str, builtins.list[dict[str, Any]]]:
        if not parsed.rows and not parsed.errors:
            raise InvalidDatasetError([], param="file", message="the file has no rows")
        task = detect_task(parsed.rows, parsed.lines) if parsed.rows else CLASSIFICATION
        rows, errors = check_rows(parsed.rows, task, lines=parsed.lines)
        errors = sorted(parsed.errors + errors, key=lambda e: e.line)
        if errors:
            raise InvalidDatasetError(errors, param="file")
        if len(rows) > self.settings.max_training_rows:
            raise bad_request(
                "too_many_rows",
                f"dataset has {len(rows)} rows > limit {self.settings.max_training_rows}",
                param="file",
            )
        return task, rows

    def _record(self, dataset_id: str, param: str) -> Dataset:
        with self.db.session() as session:
            record = session.get(Dataset, self._checked_id(dataset_id, param))
        if record is None:
            raise _missing(dataset_id, param)
        return record

    @staticmethod
    def _checked_id(dataset_id: str, param: str) -> str:
        if not isinstance(dataset_id, str) or not _ID_PATTERN.fullmatch(dataset_id):
            raise _missing(dataset_id, param)
        return dataset_id

    def _sweep(self) -> None:
        # Leftovers of writes interrupted by a crash; whole files were renamed into place.
        for leftover in self.root.glob(f"{TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)


def _check_name(name: str | None, *, default: str) -> str:
    name = (name or "").strip() or default
    if len(name) > _MAX_NAME or not name.isprintable():
        raise bad_request(
            "invalid_name",
            f"dataset name must be printable, at most {_MAX_NAME} characters",
            param="name",
        )
    return name


def _missing(dataset_id: object, param: str) -> SwitchyardError:
    return not_found("dataset_not_found", f"no dataset with id {dataset_id!r}", param=param)


def _to_json(record: Dataset) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "dataset",
        "name": record.name,
        "filename": record.filename,
        "format": record.format,
        "rows": record.rows,
        "columns": record.columns,
        "task": record.task,
        "label_counts": record.label_counts,
        "bytes": record.bytes,
        "created_at": iso(record.created_at),
    }


def _write_jsonl(path: Path, rows: builtins.list[dict[str, Any]]) -> None:
    """Write rows next to `path`, fsync, then rename: readers see the whole file or none."""
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
