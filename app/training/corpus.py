"""A language-modeling corpus read lazily: documents to fixed-length token windows.

Documents come one at a time from the dataset's stored JSONL file (one `{"text"}` row a line)
or from a job's inline rows; each is tokenized on its own and cut into windows of at most
`max_length` tokens (special tokens included) that overlap by `stride` tokens, so no token
loses its left context at a window edge. Nothing holds the corpus in memory: a training pass
re-reads the file, and shuffling mixes windows within a bounded buffer.

Held out: every `HOLDOUT_EVERY`-th document, at most `HOLDOUT_DOCS` of them and
`HOLDOUT_WINDOWS` windows, deterministic, so every evaluation of a run (and every rerun) sees
the same slice. Size: the number of windows is estimated from the first `SAMPLE_DOCS`
documents (windows per byte of their JSON lines) times the file's bytes, one cheap `stat`
instead of a second tokenizing pass; inline rows and files no bigger than the sample are
counted exactly. The estimate sizes the schedule and the token-based ETA.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from app.errors import SwitchyardError

__all__ = ["Chunking", "Corpus", "Window", "documents", "windows"]

HOLDOUT_EVERY = 20
HOLDOUT_DOCS = 64
HOLDOUT_WINDOWS = 256
SAMPLE_DOCS = 256
SHUFFLE_BUFFER = 1024


@dataclass(frozen=True)
class Window:
    """One training window: token ids, which are special, and (whole-word masking) the
    character span of each token in its document."""

    ids: list[int]
    special: list[int]
    offsets: list[tuple[int, int]] | None = None


@dataclass(frozen=True)
class Chunking:
    """How documents become windows."""

    max_length: int
    stride: int  # tokens shared by consecutive windows of a document
    offsets: bool = False  # keep character offsets (whole-word masking)
    end_of_text: bool = False  # a decoder learns where documents end: EOS after each


@dataclass(frozen=True)
class Source:
    """Where documents come from: a stored JSONL file, or inline rows."""

    path: str | None = None
    rows: Sequence[dict[str, Any]] = ()


def documents(source: Source) -> Iterator[tuple[int, str, int]]:
    """(index, text, bytes of its line) of every document, read lazily."""
    if source.path is None:
        for index, row in enumerate(source.rows):
            yield index, str(row["text"]), len(json.dumps(row)) + 1
        return
    try:
        with open(source.path, encoding="utf-8") as handle:
            index = 0
            for line in handle:
                if line.strip():
                    yield index, str(json.loads(line)["text"]), len(line.encode("utf-8"))
                    index += 1
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        raise SwitchyardError(
            500, "dataset_corrupted", f"the corpus is unreadable: {reason}", param="training_data"
        ) from exc


def windows(text: str, tokenizer: PreTrainedTokenizerBase, chunking: Chunking) -> list[Window]:
    """A document's overlapping windows, special tokens added to each."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=chunking.offsets)
    ids = list(enc["input_ids"])
    spans = [tuple(o) for o in enc["offset_mapping"]] if chunking.offsets else None
    eos = tokenizer.eos_token_id
    if chunking.end_of_text and eos is not None:
        ids.append(int(eos))
        spans = [*spans, (len(text), len(text))] if spans is not None else None
    head, tail = special_ends(tokenizer)
    body = chunking.max_length - len(head) - len(tail)
    step = max(1, body - chunking.stride)
    out = []
    for start in range(0, max(1, len(ids) - chunking.stride), step):
        piece = ids[start : start + body]
        special = [1] * len(head) + [0] * len(piece) + [1] * len(tail)
        out.append(Window(head + piece + tail, special, _spans(spans, start, len(piece), special)))
        if start + body >= len(ids):
            break
    return out


def special_ends(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] and [SEP] for
    BERT, often none for a decoder), read off how it encodes one word."""
    inner = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    for start in range(len(full) - len(inner) + 1):
        if full[start : start + len(inner)] == inner:
            return full[:start], full[start + len(inner) :]
    return [], []


def _spans(
    spans: list[tuple[int, int]] | None, start: int, length: int, special: list[int]
) -> list[tuple[int, int]] | None:
    if spans is None:
        return None
    inner = iter(spans[start : start + length])
    return [(0, 0) if flag else next(inner) for flag in special]


class Corpus:
    """A run's training windows (held-out documents excluded); `len` is the estimate."""

    def __init__(
        self, source: Source, tokenizer: PreTrainedTokenizerBase, chunking: Chunking
    ) -> None:
        self.source, self.tokenizer, self.chunking = source, tokenizer, chunking
        self.estimated, self.tokens_per_window = self._estimate()

    def __len__(self) -> int:
        return self.estimated

    def training(self) -> Iterator[Window]:
        """Every window of every training document, in file order."""
        for index, text, _size in documents(self.source):
            if not held_out(index):
                yield from windows(text, self.tokenizer, self.chunking)

    def held_out(self) -> list[Window]:
        """The held-out slice (small, so kept); empty when the corpus has too few documents."""
        out: list[Window] = []
        for index, text, _size in documents(self.source):
            if index >= HOLDOUT_EVERY * HOLDOUT_DOCS or len(out) >= HOLDOUT_WINDOWS:
                break
            if held_out(index):
                out.extend(windows(text, self.tokenizer, self.chunking))
        return out[:HOLDOUT_WINDOWS]

    def held_out_all(self) -> list[Window]:
        """Every window of every document, capped (a small validation set)."""
        out: list[Window] = []
        for _index, text, _size in documents(self.source):
            out.extend(windows(text, self.tokenizer, self.chunking))
            if len(out) >= HOLDOUT_WINDOWS:
                break
        return out[:HOLDOUT_WINDOWS]

    def shuffled(self, *, seed: int) -> Iterator[Window]:
        """Training windows without end, each pass shuffled within a bounded buffer."""
        for pass_seed in range(seed, seed + 1_000_000):
            rng = random.Random(pass_seed)
            produced = False
            for window in _buffered(self.training(), rng):
                produced = True
                yield window
            if not produced:
                return

    def _estimate(self) -> tuple[int, float]:
        counted, size, tokens, docs = 0, 0, 0, 0
        for index, text, line_bytes in documents(self.source):
            if docs >= SAMPLE_DOCS:
                break
            docs += 1
            if held_out(index):
                continue
            found = windows(text, self.tokenizer, self.chunking)
            counted += len(found)
            tokens += sum(len(w.ids) for w in found)
            size += line_bytes
        per_window = tokens / max(counted, 1)
        if docs < SAMPLE_DOCS or self.source.path is None:
            return max(counted, 1), per_window
        total = Path(self.source.path).stat().st_size
        return max(counted, round(counted * total / max(size, 1))), per_window


def held_out(index: int) -> bool:
    """Whether document `index` belongs to the held-out slice."""
    return index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 and index < HOLDOUT_EVERY * HOLDOUT_DOCS


def _buffered(items: Iterable[Window], rng: random.Random) -> Iterator[Window]:
    buffer: list[Window] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= SHUFFLE_BUFFER:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer
