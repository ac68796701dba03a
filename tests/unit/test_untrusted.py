"""app.untrusted: the one gate for user text and JSON (issue 13, classes 1 and 5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import SwitchyardError
from app.untrusted import MAX_JSON_DEPTH, check_text, check_tree, load_json

# Any code point, lone surrogates included: what a JSON `\uXXXX` escape can produce.
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF))
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children),
    max_leaves=20,
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_text(obj: Any) -> bool:
    if isinstance(obj, str):
        return _encodable(obj)
    if isinstance(obj, dict):
        return all(_encodable(k) and _all_text(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_all_text(v) for v in obj)
    return True


def test_lone_surrogate_is_a_400_naming_the_field() -> None:
    with pytest.raises(SwitchyardError) as err:
        load_json(json.dumps({"inputs": ["ok", "\ud800"]}), what="body", param="body")
    assert err.value.status == 400
    assert err.value.code == "invalid_text"
    assert err.value.param == "body.inputs[1]"


def test_surrogate_in_a_key_is_refused() -> None:
    with pytest.raises(SwitchyardError) as err:
        check_tree({"\udfff": 1}, param="row")
    assert err.value.code == "invalid_text"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 200_000])
def test_deep_nesting_is_a_400_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(SwitchyardError) as err:
        load_json("[" * depth + "]" * depth, what="row", param="row")
    assert (err.value.status, err.value.code) == (400, "invalid_json")


def test_nesting_at_the_limit_passes() -> None:
    depth = MAX_JSON_DEPTH
    assert load_json("[" * depth + "]" * depth, what="row", param="row") is not None


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_refused(literal: str) -> None:
    with pytest.raises(SwitchyardError) as err:
        load_json(f'{{"x": {literal}}}', what="config", param="config")
    assert err.value.code == "invalid_json"


def test_decode_error_names_line_and_column_not_an_offset_param() -> None:
    with pytest.raises(SwitchyardError) as err:
        load_json('{"a":\n [1,', what="body", param="body")
    assert err.value.param == "body"
    assert "line 2" in err.value.message


def test_duplicate_keys_refused_only_when_asked() -> None:
    assert load_json('{"a": 1, "a": 2}', what="x", param="x") == {"a": 2}
    with pytest.raises(SwitchyardError, match=r"repeats keys \['a'\]"):
        load_json('{"a": 1, "a": 2}', what="x", param="x", reject_duplicate_keys=True)


def test_invalid_utf8_bytes_are_a_400() -> None:
    with pytest.raises(SwitchyardError) as err:
        load_json(b'{"a": "\xff"}', what="x", param="x")
    assert err.value.code == "invalid_json"


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_load_json_accepts_exactly_the_encodable_trees(value: Any) -> None:
    raw = json.dumps(value)  # ensure_ascii: surrogates travel as escapes, as an attacker sends
    if _all_text(value):
        assert load_json(raw, what="x", param="x") == json.loads(raw)
    else:
        with pytest.raises(SwitchyardError) as err:
            load_json(raw, what="x", param="x")
        assert err.value.status == 400


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_check_text_agrees_with_utf8(text: str) -> None:
    if _encodable(text):
        assert check_text(text, param="t") == text
    else:
        with pytest.raises(SwitchyardError):
            check_text(text, param="t")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_another_exception(data: bytes) -> None:
    try:
        load_json(data, what="x", param="x")
    except SwitchyardError as exc:
        assert exc.status == 400
