"""Batch tokenization: one call over many requests gives each request exactly the rows that
tokenizing it alone gives; shape errors fail at submit, too-long inputs fail only their own
request."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from app.errors import SwitchyardError
from app.runtime.tokenize import TextBatch, defer, encode_all

words = st.text(alphabet="abcdefgh ,.", min_size=1, max_size=30)
inputs = st.lists(
    st.one_of(words, st.fixed_dictionaries({"text": words, "text_pair": words})),
    min_size=1,
    max_size=4,
)


def _alone(tokenizer: PreTrainedTokenizerBase, batch: TextBatch) -> list[list[int]]:
    return [list(tokenizer(t, p)["input_ids"]) for t, p in batch.texts]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=st.lists(inputs, min_size=1, max_size=4), per_token=st.booleans())
def test_one_call_equals_each_request_alone(
    tokenizer: PreTrainedTokenizerBase, requests: list[list[object]], per_token: bool
) -> None:
    batches = [defer(r, per_token=per_token) for r in requests]
    encode_all(tokenizer, batches, max_tokens=512, truncate=False)
    for batch in batches:
        assert batch.error is None and batch.rows is not None
        assert [row.input_ids for row in batch.rows] == _alone(tokenizer, batch)
        if per_token:
            assert all(len(row.offsets) == len(row.input_ids) for row in batch.rows)


def test_shared_batch_is_tokenized_once_and_too_long_fails_only_its_request(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    shared = defer(["short"], per_token=False)
    long = defer(["short", "word " * 40], per_token=False)
    encode_all(tokenizer, [shared, shared, long], max_tokens=16, truncate=False)
    assert shared.rows is not None and len(shared.rows) == 1
    assert long.rows is None and long.error is not None
    assert long.error.code == "input_too_long" and long.error.param == "inputs[1]"
    truncated = defer(["word " * 40], per_token=False)
    encode_all(tokenizer, [truncated], max_tokens=16, truncate=True)
    assert truncated.rows is not None and len(truncated.rows[0].input_ids) == 16


@pytest.mark.parametrize("bad", [3, {"text": 1}, {"text": "a", "text_pair": 2}, None])
def test_malformed_input_fails_at_submit(bad: object) -> None:
    with pytest.raises(SwitchyardError) as info:
        defer(["fine", bad], per_token=False)
    assert info.value.status == 400 and info.value.param == "inputs[1]"
