"""Plain text read line by line: line and paragraph documents, CRLF, BOM, blank lines, bad
bytes and over-long lines by line number, `auto`'s choice, and round-trip properties."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import SwitchyardError
from app.training.textfile import (
    Line,
    Split,
    atomic_writer,
    choose_split,
    documents,
    read_lines,
    resolve_split,
)

LIMIT = 1024


def docs(data: bytes, split: Split, limit: int = LIMIT) -> list[Line]:
    lines = read_lines(io.BytesIO(data), max_line_bytes=limit)
    return list(documents(lines, split=split, max_document_bytes=limit))


def texts(data: bytes, split: Split) -> list[str]:
    found = docs(data, split)
    assert [d.problem for d in found if d.problem] == []
    return [d.text for d in found]


def test_line_mode_is_one_document_a_non_blank_line() -> None:
    data = b"first\n\n   \t\nsecond  \n  third\n"
    assert texts(data, "line") == ["first", "second  ", "  third"]
    assert [d.number for d in docs(data, "line")] == [1, 4, 5]


def test_paragraph_mode_joins_lines_between_blank_lines() -> None:
    data = b"one a\none b\n\n\n  \ntwo\n\nthree a\nthree b"
    assert texts(data, "paragraph") == ["one a\none b", "two", "three a\nthree b"]
    assert [d.number for d in docs(data, "paragraph")] == [1, 6, 8]


@pytest.mark.parametrize("split", ["line", "paragraph"])
def test_crlf_and_a_bom_are_not_part_of_the_text(split: Split) -> None:
    data = b"\xef\xbb\xbfalpha\r\nbeta\r\n\r\ngamma\r\n"
    expected = ["alpha", "beta", "gamma"] if split == "line" else ["alpha\nbeta", "gamma"]
    assert texts(data, split) == expected


def test_only_a_leading_bom_is_dropped() -> None:
    assert texts(b"a\n\xef\xbb\xbfb\n", "line") == ["a", "\ufeffb"]


def test_only_newline_ends_a_line() -> None:
    # U+2028, U+0085 and form feeds are text inside a line, not line breaks.
    data = "a\u2028b\x85c\x0cd\n".encode()
    assert texts(data, "line") == ["a\u2028b\x85c\x0cd"]


def test_bad_utf8_is_reported_with_its_line_and_reading_goes_on() -> None:
    found = docs(b"good\nbad \xff here\nalso good\n\xc3\n", "line")
    assert [(d.number, d.text) for d in found if not d.problem] == [(1, "good"), (3, "also good")]
    problems = [(d.number, d.problem) for d in found if d.problem]
    assert problems == [
        (2, "not UTF-8 text (byte 5 of the line is 0xff)"),
        (4, "not UTF-8 text (byte 1 of the line is 0xc3)"),
    ]


def test_an_over_long_line_is_a_problem_and_the_next_line_is_read() -> None:
    data = b"short\n" + b"x" * 5000 + b"\nafter\n"
    found = docs(data, "line", limit=100)
    assert [(d.number, d.text) for d in found if not d.problem] == [(1, "short"), (3, "after")]
    assert [(d.number, d.problem) for d in found if d.problem] == [
        (2, "the line is longer than max_corpus_document_bytes 100")
    ]


def test_an_over_long_paragraph_is_a_problem_at_its_first_line() -> None:
    para = b"\n".join([b"y" * 60] * 5)
    found = docs(b"ok\n\n" + para + b"\n\nlast\n", "paragraph", limit=100)
    assert [(d.number, d.text) for d in found if not d.problem] == [(1, "ok"), (9, "last")]
    assert [(d.number, d.problem) for d in found if d.problem] == [
        (3, "the paragraph is longer than max_corpus_document_bytes 100")
    ]


def test_auto_picks_paragraphs_only_for_paragraph_sized_blocks() -> None:
    prose = ["a", "b", "", "c", "d", "e", "", "f"]
    assert choose_split(prose) == "paragraph"
    # One stray blank line in a file of one document a line keeps it a line file.
    assert choose_split([f"doc {i}" for i in range(100)] + [""] + ["doc"] * 100) == "line"
    assert choose_split(["a", "b", "c"]) == "line"  # no blank line at all
    assert choose_split([]) == "line"


def test_a_split_is_checked_and_auto_is_decided() -> None:
    assert resolve_split(None, ["a", "", "b"]) == "paragraph"
    assert resolve_split("line", ["a", "", "b"]) == "line"
    with pytest.raises(SwitchyardError) as caught:
        resolve_split("sentence", [])
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "invalid_split",
        "split",
    )
    assert "'sentence' is not one of auto, line, paragraph" in caught.value.message


def test_an_error_inside_the_writer_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "rows.jsonl"
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write("half")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with atomic_writer(target) as handle:
        handle.write("whole\n")
    assert target.read_text() == "whole\n" and list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------- properties
# A line of a document: any text but line breaks and lone surrogates, not blank. A BOM could
# only be lost at the very start of a file; it is tested above, not here.
line_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\n\r\ufeff"),
    min_size=1,
    max_size=20,
).filter(str.strip)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(
    written=st.lists(line_text, max_size=12),
    newline=st.sampled_from(["\n", "\r\n"]),
    blank=st.sampled_from(["", " ", "\t "]),
    bom=st.booleans(),
    trailing=st.booleans(),
)
def test_line_documents_round_trip(
    written: list[str], newline: str, blank: str, bom: bool, trailing: bool
) -> None:
    body = newline.join(f"{doc}{newline}{blank}" if blank else doc for doc in written)
    data = ("\ufeff" if bom else "") + body + (newline if trailing else "")
    assert texts(data.encode(), "line") == written


@PROPS
@given(
    written=st.lists(st.lists(line_text, min_size=1, max_size=4), max_size=8),
    newline=st.sampled_from(["\n", "\r\n"]),
    gap=st.integers(min_value=1, max_value=3),
    blank=st.sampled_from(["", "  ", "\t"]),
)
def test_paragraph_documents_round_trip(
    written: list[list[str]], newline: str, gap: int, blank: str
) -> None:
    separator = newline + (blank + newline) * gap
    data = separator.join(newline.join(para) for para in written) + newline
    assert texts(data.encode(), "paragraph") == ["\n".join(para) for para in written]


@PROPS
@given(
    data=st.binary(max_size=300),
    split=st.sampled_from(["line", "paragraph"]),
    limit=st.integers(min_value=1, max_value=64),
)
def test_any_bytes_give_documents_or_problems_in_line_order(
    data: bytes, split: Split, limit: int
) -> None:
    found = docs(data, split, limit=limit)
    numbers = [d.number for d in found]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert all(1 <= n <= data.count(b"\n") + 1 for n in numbers)
    for doc in found:
        assert (doc.problem is None) == bool(doc.text.strip())
        assert len(doc.text.encode()) <= limit
