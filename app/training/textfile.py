"""Uploaded text read one line (or paragraph) at a time, and dataset files written atomically.

Unlabeled corpora run to hundreds of megabytes, so nothing here holds more than one line or
one paragraph of a file: a line is read with a byte bound (a file of one endless line costs
that bound, not the file), decoded on its own (a bad byte is reported with its line) and
handed on. The line number of everything that comes out is the file's own, 1-based.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, TextIO, cast, get_args

from app.errors import bad_request
from app.registry.durable import storage_full

Split = Literal["line", "paragraph"]
SplitChoice = Literal["auto", "line", "paragraph"]
SPLITS: tuple[str, ...] = get_args(SplitChoice)
SPLIT_RULE = (
    "plain text only: `line`, one document a line; `paragraph`, one a blank-line-separated "
    "block; `auto` picks paragraph when blank lines cut the first 64 KiB into at least two "
    "blocks of at most 40 lines on average, else line"
)
# How much of a file decides its format and, under `auto`, its split: enough for hundreds of
# lines, little enough that sniffing is no memory cost however big the file is.
SNIFF_BYTES = 64 * 1024
TMP_PREFIX = ".tmp-"
_BOM = b"\xef\xbb\xbf"
_DRAIN_BYTES = 64 * 1024
# `auto` reads blank-line-separated blocks as documents only when they are paragraph-sized:
# one stray blank line in a file of one document a line must not merge thousands of them.
_AUTO_MAX_LINES_PER_BLOCK = 40


@dataclass(frozen=True)
class Line:
    """A line or paragraph of an upload: where it starts, its text without the line break, its
    size in bytes; or, when `problem` is set, why it cannot be read (its text is then empty)."""

    number: int
    text: str
    size: int = 0
    problem: str | None = None


def read_lines(stream: BinaryIO, *, max_line_bytes: int, keep_ends: bool = False) -> Iterator[Line]:
    """Each line of `stream`, decoded as UTF-8 (a leading BOM dropped), split at `\\n` only.

    `keep_ends` keeps the line break (`\\n` or `\\r\\n`), as a CSV reader needs; otherwise it
    is removed. A line over `max_line_bytes` or not UTF-8 is a `Line` with a `problem`.
    """
    number = 0
    while raw := stream.readline(max_line_bytes + 1):
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            _drain_line(stream)
            problem = f"the line is longer than max_corpus_document_bytes {max_line_bytes}"
            yield Line(number, "", len(raw), problem)
            continue
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start]
            problem = f"not UTF-8 text (byte {exc.start + 1} of the line is {bad:#04x})"
            yield Line(number, "", len(raw), problem)
            continue
        yield Line(number, text if keep_ends else _chomp(text), len(raw))


def documents(lines: Iterable[Line], *, split: Split, max_document_bytes: int) -> Iterator[Line]:
    """The documents of plain text: each non-blank line, or each blank-line-separated block.

    A paragraph keeps its inner line breaks (as `\\n`) and starts at its first line; blank or
    whitespace-only lines are never documents. Unreadable lines pass through as they are.
    """
    if split == "line":
        yield from (line for line in lines if line.problem or line.text.strip())
        return
    block: list[str] = []
    start = size = 0
    for line in lines:
        if line.problem:
            yield line
        elif not line.text.strip():
            if size:
                yield _paragraph(start, block, size, max_document_bytes)
            block, size = [], 0
        else:
            start = start if size else line.number
            size += line.size
            if size <= max_document_bytes:
                block.append(line.text)
            else:  # past the bound, the rest of the paragraph is counted, not kept
                block.clear()
    if size:
        yield _paragraph(start, block, size, max_document_bytes)


def choose_split(lines: list[str]) -> Split:
    """`auto`'s choice from a file's first lines: `paragraph` when blank lines cut them into
    at least two blocks of at most 40 lines on average, else `line`."""
    blocks = nonblank = 0
    in_block = False
    for text in lines:
        if text.strip():
            nonblank += 1
            blocks += not in_block
            in_block = True
        else:
            in_block = False
    paragraphs = blocks >= 2 and nonblank <= blocks * _AUTO_MAX_LINES_PER_BLOCK
    return "paragraph" if paragraphs else "line"


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A UTF-8 handle on a file next to `path`, fsynced and renamed onto `path` when the block
    ends: readers see the whole file or none. An error in the block removes it; a full disk
    is a 507 that names no path."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = storage_full(exc, "the dataset") if isinstance(exc, OSError) else None
        if full is not None:
            raise full from exc
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def whole_lines(prefix: str, *, whole: bool) -> list[str]:
    """The lines of a file's first bytes, less the last when the prefix may have cut it."""
    lines = prefix.split("\n")
    return lines if whole else lines[:-1]


def resolve_split(split: str | None, lines: list[str]) -> Split:
    """`split` checked (None means `auto`), and `auto` decided from the file's first lines."""
    split = split or "auto"
    if split not in SPLITS:
        raise bad_request(
            "invalid_split", f"split {split!r} is not one of {', '.join(SPLITS)}", param="split"
        )
    return choose_split(lines) if split == "auto" else cast(Split, split)


def _paragraph(start: int, block: list[str], size: int, limit: int) -> Line:
    if size > limit:
        problem = f"the paragraph is longer than max_corpus_document_bytes {limit}"
        return Line(start, "", size, problem)
    return Line(start, "\n".join(block), size)


def _chomp(text: str) -> str:
    if text.endswith("\n"):
        text = text[:-1]
    return text[:-1] if text.endswith("\r") else text


def _drain_line(stream: BinaryIO) -> None:
    # Skip to the end of an over-long line in bounded pieces.
    while (piece := stream.readline(_DRAIN_BYTES)) and not piece.endswith(b"\n"):
        pass
