"""Tokenization of encoder requests, one tokenizer call per batch.

The event loop only checks the shape of each input (`defer`, cheap and synchronous, so a
malformed input still fails its request at submit time); the tokenizer runs in the batcher's
worker thread, once over every waiting request's texts (`encode_all`). A fast tokenizer's
batch call encodes 8 short texts in about the time of 1, and the event loop no longer spends
~1 ms per request in it (measured here, bench/README.md issue 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from app.errors import SwitchyardError, bad_request

Text = tuple[str, str | None]


@dataclass
class EncodedRow:
    """One tokenized input."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    text: str = ""
    offsets: list[tuple[int, int]] = field(default_factory=list)
    word_ids: list[int | None] = field(default_factory=list)


@dataclass
class TextBatch:
    """One request's checked inputs, tokenized later with the rest of the batch; requests over
    the same inputs and task share one (tokenized once)."""

    texts: list[Text]
    per_token: bool  # token tasks need character offsets and word ids
    rows: list[EncodedRow] | None = None
    error: SwitchyardError | None = None


def defer(inputs: list[Any], *, per_token: bool) -> TextBatch:
    """Check each input's shape (400 naming the input) without tokenizing."""
    return TextBatch([split_input(item, index) for index, item in enumerate(inputs)], per_token)


def encode_all(
    tokenizer: PreTrainedTokenizerBase,
    batches: list[TextBatch],
    *,
    max_tokens: int,
    truncate: bool,
) -> None:
    """Tokenize every not yet tokenized batch, one tokenizer call per kind; a too-long input
    fails only its own batch (`error`)."""
    for per_token in (False, True):
        # by identity: requests over the same inputs share one TextBatch
        todo = list({id(b): b for b in batches if b.rows is None and b.error is None}.values())
        todo = [b for b in todo if b.per_token == per_token]
        texts = [t if p is None else (t, p) for b in todo for t, p in b.texts]
        if not texts:
            continue
        enc = tokenizer(
            texts,
            truncation=truncate,
            max_length=max_tokens,
            return_offsets_mapping=per_token,
        )
        start = 0
        for batch in todo:
            batch.rows = []
            for index, (text, _pair) in enumerate(batch.texts):
                batch.rows.append(_row(enc, start + index, text, per_token))
            start += len(batch.texts)
            batch.error = _too_long(batch.rows, max_tokens)
            if batch.error is not None:
                batch.rows = None


def _row(enc: Any, n: int, text: str, per_token: bool) -> EncodedRow:
    types = enc.get("token_type_ids")
    row = EncodedRow(list(enc["input_ids"][n]), list(types[n]) if types else None, text=text)
    if per_token:
        row.offsets = [tuple(o) for o in enc["offset_mapping"][n]]
        row.word_ids = enc.word_ids(n)
    return row


def _too_long(rows: list[EncodedRow], max_tokens: int) -> SwitchyardError | None:
    for index, row in enumerate(rows):
        if len(row.input_ids) > max_tokens:
            return bad_request(
                "input_too_long",
                f"input {index} has {len(row.input_ids)} tokens > max_input_tokens {max_tokens}",
                param=f"inputs[{index}]",
            )
    return None


def split_input(item: Any, index: int) -> Text:
    """An input's text and optional pair; 400 for any other shape."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        pair = item.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise bad_request(
                "invalid_input",
                f"inputs[{index}].text_pair must be a string",
                param=f"inputs[{index}]",
            )
        return item["text"], pair
    raise bad_request(
        "invalid_input",
        f"inputs[{index}] must be a string or {{'text', 'text_pair'}}",
        param=f"inputs[{index}]",
    )
