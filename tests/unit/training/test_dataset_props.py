"""Property-based: any dataset file is a 201 or a 4xx in the error shape, and a refusal stores
nothing.

Rows are drawn from arbitrary unicode (lone surrogates, U+2028, NUL, BOMs), nesting past the
depth limit and numbers at and past float64's range, uploaded over
HTTP to the tiny-model app as JSONL (escaped and raw) and as CSV. These are the classes a
black-box review found as 500s (a surrogate stored, then unlistable; RecursionError on a deep
row; U+2028 splitting a row; an open quote swallowing the rest of a CSV).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import wrap_base
from app.config import Settings
from app.main import create_app

ODD = ["\ud800", "\udfff", "\u2028", "\u2029", "\x85", "\x00", "\r", "\n", "\ufeff", '"', ","]
texts = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(ODD)), max_size=4).map("".join)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 2**63, 10**300]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(min_value=20, max_value=80).map(_nested)
KNOWN = ["text", "text_pair", "label", "labels", "tokens", "tags", "prompt", "completion"]
keys = st.one_of(st.sampled_from(KNOWN), texts)
rows = st.dictionaries(keys, st.one_of(values, deep, texts), max_size=4)
good_rows = st.builds(
    lambda text, label: {"text": text, "label": label},
    st.text(min_size=1, max_size=8).filter(str.strip),
    st.sampled_from(["pos", "neg"]),
)
files = st.lists(st.one_of(rows, good_rows), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def client(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    base = wrap_base(
        BertModel.from_pretrained(tiny_bert_dir),
        tokenizer,
        name="tiny-bert",
        path=tiny_bert_dir,
        device=torch.device("cpu"),
    )
    store = tmp_path_factory.mktemp("dataset-props") / "store"
    app_settings = Settings(store=store, _env_file=None)
    with TestClient(create_app(app_settings, base=base)) as test_client:
        yield test_client


def _jsonl(items: list[dict[str, Any]], *, escaped: bool) -> bytes:
    lines = [json.dumps(row, ensure_ascii=escaped) for row in items]
    # Raw surrogates cannot be UTF-8; surrogatepass writes the bytes a careless client would.
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _csv(items: list[dict[str, Any]]) -> bytes:
    header = list(dict.fromkeys(k for row in items for k in row)) or ["text"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in items:
        cells = [row.get(k, "") for k in header]
        writer.writerow([c if isinstance(c, str) else json.dumps(c) for c in cells])
    return out.getvalue().encode("utf-8", "surrogatepass")


def _listed(client: TestClient) -> list[str]:
    response = client.get("/v1/datasets")
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()["data"]]


def _check_upload(client: TestClient, filename: str, data: bytes) -> None:
    before = _listed(client)
    response = client.post("/v1/datasets", files={"file": (filename, data)})
    assert response.status_code < 500, response.text
    if response.status_code == 201:
        created = response.json()["id"]
        assert created in _listed(client)
        shown = client.get(f"/v1/datasets/{created}")
        assert shown.status_code == 200, shown.text
        assert client.delete(f"/v1/datasets/{created}").status_code == 200
        return
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "param"}
    assert isinstance(error["message"], str) and error["message"]
    assert _listed(client) == before


PROPS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPS
@given(items=files, escaped=st.booleans())
def test_any_jsonl_file_is_a_201_or_a_clean_4xx(
    client: TestClient, items: list[dict[str, Any]], escaped: bool
) -> None:
    _check_upload(client, "rows.jsonl", _jsonl(items, escaped=escaped))


@PROPS
@given(items=files)
def test_any_csv_file_is_a_201_or_a_clean_4xx(
    client: TestClient, items: list[dict[str, Any]]
) -> None:
    _check_upload(client, "rows.csv", _csv(items))


@PROPS
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".csv", ""]))
def test_any_bytes_are_a_201_or_a_clean_4xx(client: TestClient, raw: bytes, suffix: str) -> None:
    _check_upload(client, f"blob{suffix}", raw)


def test_the_listing_still_works_after_everything(client: TestClient) -> None:
    assert _listed(client) == []
