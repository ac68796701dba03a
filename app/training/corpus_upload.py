"""Text-only datasets (unlabeled corpora): told apart by a file's first bytes, then validated and
stored one document at a time, so a file of hundreds of megabytes never sits in memory.

A text-only dataset is plain text (`.txt`, or a file that is neither JSONL nor CSV), JSONL whose
rows have the one key `text`, or CSV whose one column is `text`. Whatever its format, it is
stored as the normalised JSONL every dataset has, one `{"text": ...}` row a line, so its rows
can be read back lazily, line by line. Labeled files take the in-memory path of
`app.training.datasets`, under their own (smaller) size limit.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from app.config import Settings
from app.errors import SwitchyardError
from app.tasks import LANGUAGE_MODELING, TRAINABLE
from app.tasks.base import Row, RowProblem
from app.training.rows import MAX_REPORTED_ERRORS, InvalidDatasetError, RowError
from app.training.textfile import (
    Line,
    Split,
    atomic_writer,
    documents,
    read_lines,
    resolve_split,
    whole_lines,
)
from app.untrusted import load_json

# The task whose rows are `{"text"}` alone: its `check_row` validates every stored row.
CORPUS_TASK = LANGUAGE_MODELING
TEXT = "text"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = (".txt", ".text")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

Item = RowError | tuple[int, Row]  # a row and the line it starts on, or what is wrong there


@dataclass(frozen=True)
class Sniffed:
    """What a file's first bytes say: its format (`jsonl`, `csv` or `text`) and whether its
    rows are text alone."""

    format: str
    text_only: bool
    split: Split  # how plain text is cut into documents (`auto` decided)


def sniff(filename: str, prefix: bytes, *, whole: bool, split: str | None = None) -> Sniffed:
    """The format by extension, else by content; text-only by the rows within `prefix` (the
    first bytes of the file, `whole` when they are all of it); `split` checked and decided.

    Without a known extension a leading `{` is JSONL and a first line that is a CSV header
    naming a known column (`text`, `label`, ...) is CSV; anything else is plain text.
    """
    text = prefix.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = whole_lines(text, whole=whole)
    chosen = resolve_split(split, lines)
    suffix = Path(filename).suffix.lower()
    if suffix in JSONL_SUFFIXES or (suffix not in (".csv", *TEXT_SUFFIXES) and _is_jsonl(text)):
        return Sniffed("jsonl", _text_only_jsonl(lines), chosen)
    header = _header(text)
    if suffix == ".csv" or (suffix not in TEXT_SUFFIXES and _known_header(header)):
        return Sniffed("csv", header == [TEXT], chosen)
    return Sniffed("text", True, chosen)


def check_size(size: int, *, text_only: bool, settings: Settings) -> None:
    """A 413 naming the size and the limit when a file is over its kind's limit."""
    if text_only:
        what, setting, limit = "text-only dataset", "max_corpus_bytes", settings.max_corpus_bytes
    else:
        what, setting, limit = "dataset", "max_dataset_bytes", settings.max_dataset_bytes
    if size > limit:
        message = f"{what} is {size} bytes > {setting} {limit}"
        raise SwitchyardError(413, "payload_too_large", message, param="file")


def store_corpus(
    stream: BinaryIO, *, fmt: str, split: Split, path: Path, max_document_bytes: int
) -> int:
    """Validate every row of a text-only file and store them at `path`; returns how many.

    All or nothing, as for labeled files: any bad row (the first ten are reported, all are
    counted) leaves nothing at `path`.
    """
    check = _row_checker()
    first: list[RowError] = []
    bad = rows = 0
    with atomic_writer(path) as out:
        for item in _rows(stream, fmt=fmt, split=split, max_document_bytes=max_document_bytes):
            error = item if isinstance(item, RowError) else _checked(item, check, out)
            if error is None:
                rows += 1
                continue
            bad += 1
            if len(first) < MAX_REPORTED_ERRORS:
                first.append(error)
        if bad:
            errors = sorted(first, key=lambda e: e.line)
            raise InvalidDatasetError(errors, param="file", total=bad)
        if not rows:
            raise InvalidDatasetError([], param="file", message="the file has no rows")
    return rows


def _checked(item: tuple[int, Row], check: Callable[[Row], Row], out: TextIO) -> RowError | None:
    line, row = item
    try:
        checked = check(row)
    except RowProblem as problem:
        return RowError(line, str(problem))
    out.write(json.dumps(checked, ensure_ascii=False) + "\n")
    return None


def _row_checker() -> Callable[[Row], Row]:
    return TRAINABLE[CORPUS_TASK].check_row


def _rows(stream: BinaryIO, *, fmt: str, split: Split, max_document_bytes: int) -> Iterator[Item]:
    keep_ends = fmt == "csv"  # a quoted CSV cell keeps the line breaks inside it
    lines = read_lines(stream, max_line_bytes=max_document_bytes, keep_ends=keep_ends)
    if fmt == "jsonl":
        return _jsonl_rows(lines)
    if fmt == "csv":
        return _csv_rows(lines)
    docs = documents(lines, split=split, max_document_bytes=max_document_bytes)
    return (
        RowError(doc.number, doc.problem) if doc.problem else (doc.number, {TEXT: doc.text})
        for doc in docs
    )


def _jsonl_rows(lines: Iterable[Line]) -> Iterator[Item]:
    for line in lines:
        if line.problem:
            yield RowError(line.number, line.problem)
        elif line.text.strip():
            yield _jsonl_row(line)


def _jsonl_row(line: Line) -> Item:
    try:
        row = load_json(line.text, what="the row", param="file")
    except SwitchyardError as exc:
        return RowError(line.number, exc.message)
    if not isinstance(row, dict):
        return RowError(line.number, f"expected a JSON object, got {type(row).__name__}")
    if list(row) != [TEXT]:
        columns = sorted(row)[:10]
        message = f"rows of a text-only dataset have the one column 'text'; this has {columns}"
        return RowError(line.number, message)
    return line.number, row


def _csv_rows(lines: Iterable[Line]) -> Iterator[Item]:
    broken: list[RowError] = []
    reader = csv.reader(_csv_source(lines, broken), strict=True)
    try:
        next(reader, None)  # the header, `text` (sniffed)
        end = reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num  # a quoted cell may span lines
            if len(record) > 1:
                yield RowError(start, f"{len(record)} fields, the header has 1")
            elif record and record[0].strip():
                yield start, {TEXT: record[0]}
    except csv.Error as exc:
        yield RowError(reader.line_num, f"unreadable CSV: {exc}")
    yield from broken


def _csv_source(lines: Iterable[Line], broken: list[RowError]) -> Iterator[str]:
    # A line that cannot be read ends the CSV there: a reader cannot skip part of a record.
    for line in lines:
        if line.problem:
            broken.append(RowError(line.number, line.problem))
            return
        yield line.text


def _is_jsonl(text: str) -> bool:
    return text.lstrip().startswith("{")


def _text_only_jsonl(lines: list[str]) -> bool:
    """Whether the rows that parse among `lines` are all `{"text": ...}` (and there is one)."""
    seen = False
    for piece in lines:
        try:
            row = json.loads(piece) if piece.strip() else None
        except ValueError:
            continue  # a bad line is reported by whichever path reads the file
        if isinstance(row, dict):
            if list(row) != [TEXT]:
                return False
            seen = True
    return seen


def _header(text: str) -> list[str]:
    first = text.split("\n", 1)[0]
    try:
        cells = next(csv.reader([first]), [])
    except csv.Error:
        return []
    return [cell.strip() for cell in cells]


def _known_header(header: list[str]) -> bool:
    names = [name for name in header if name and set(name) <= _NAME_CHARS]
    known = {TEXT, "text_pair", *(c for task in TRAINABLE.values() for c in task.columns)}
    return bool(header) and len(names) == len(header) and any(n in known for n in names)
