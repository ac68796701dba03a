"""Every place user text enters the HTTP API refuses what is not text, before storing anything.

JSON allows `"\\ud800"` (a lone surrogate: no UTF-8 encoding exists) and nesting past any
recursive code's stack. These reached SQLite, the store and responses after being stored: a
predict 500ed, a job's labels made `GET /v1/training-jobs` 500 for good, an upload 500ed with
the adapter stored. Each case below goes through the tiny-model app over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.api.json_route import is_json
from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from tests.conftest import peft_adapter, upload

SURROGATE = "\\ud800"  # the JSON escape, as a client sends it
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def adapter_files(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    return peft_adapter(tiny_bert_dir, num_labels=2, out=tmp_path_factory.mktemp("text-entry"))


@pytest.fixture
def app_client(
    settings: Settings, tiny_base: FrozenBase, adapter_files: dict[str, bytes]
) -> Iterator[TestClient]:
    with TestClient(create_app(settings, base=tiny_base)) as client:
        assert upload(client, "sst2", adapter_files, labels=LABELS).status_code == 201
        yield client


def post_raw(client: TestClient, url: str, body: str) -> Any:
    return client.post(url, content=body.encode(), headers={"content-type": "application/json"})


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    """The error of a refused request, checked to be in API.md's shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message", "param"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (f'{{"inputs": ["{SURROGATE}"]}}', "inputs[0]"),
        (f'{{"inputs": [{{"text": "a{SURROGATE}b"}}]}}', "inputs[0].text"),
        (f'{{"inputs": ["a"], "parameters": {{"{SURROGATE}": 1}}}}', "parameters"),
    ],
)
def test_lone_surrogate_in_predict_is_a_400_naming_the_field(
    app_client: TestClient, body: str, param: str
) -> None:
    error = error_of(post_raw(app_client, "/v1/adapters/sst2/predict", body))
    assert error["code"] == "invalid_text"
    assert error["param"] == param
    assert "\\ud800" in error["message"]


def test_lone_surrogate_in_multi_predict_and_embeddings(app_client: TestClient) -> None:
    many = post_raw(
        app_client, "/v1/predict", f'{{"adapters": ["sst2"], "inputs": ["{SURROGATE}"]}}'
    )
    assert error_of(many)["param"] == "inputs[0]"
    for body, param in [
        (f'{{"input": "{SURROGATE}"}}', "input"),
        (f'{{"input": ["ok", "{SURROGATE}"]}}', "input[1]"),
    ]:
        error = error_of(post_raw(app_client, "/v1/embeddings", body))
        assert (error["code"], error["param"]) == ("invalid_text", param)


def test_lone_surrogate_in_job_labels_stores_no_job(app_client: TestClient) -> None:
    rows = [{"text": f"row {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]
    body = json.dumps({"adapter": "job", "examples": rows}).replace('"pos"', f'"{SURROGATE}"', 1)
    error = error_of(post_raw(app_client, "/v1/training-jobs", body))
    assert error["code"] == "invalid_text"
    assert error["param"] == "examples[1].label"
    listed = app_client.get("/v1/training-jobs")
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == []


def test_lone_surrogate_in_upload_labels_stores_no_adapter(
    app_client: TestClient, adapter_files: dict[str, bytes]
) -> None:
    files = {k: (k, v) for k, v in adapter_files.items()}
    data = {"name": "bad", "task": "classification", "labels": f'["neg", "{SURROGATE}"]'}
    error = error_of(app_client.post("/v1/adapters", data=data, files=files))
    assert (error["code"], error["param"]) == ("invalid_text", "labels[1]")
    assert app_client.get("/v1/adapters/bad").status_code == 404
    listed = app_client.get("/v1/adapters")
    assert listed.status_code == 200
    assert [a["name"] for a in listed.json()["data"]] == ["sst2"]


def _datasets(client: TestClient) -> list[str]:
    listed = client.get("/v1/datasets")
    assert listed.status_code == 200
    return [d["id"] for d in listed.json()["data"]]


def _upload_dataset(client: TestClient, name: str, data: bytes) -> Any:
    return client.post("/v1/datasets", files={"file": (name, data)})


GOOD = [json.dumps({"text": "fine", "label": "pos"}), json.dumps({"text": "bad", "label": "neg"})]


@pytest.mark.parametrize(
    "row",
    [
        f'{{"text": "a{SURROGATE}", "label": "pos"}}',
        f'{{"text": "a", "label": "pos", "{SURROGATE}": 1}}',
        '{"text": "a", "label": "pos", "extra": ' + "[" * 40 + "]" * 40 + "}",
        '{"text": "a", "label": "pos", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"text": "a", "label": ' + "1" * 5000 + "}",
    ],
    ids=["surrogate-value", "surrogate-key", "nested-40", "nested-100000", "long-integer"],
)
def test_bad_jsonl_row_is_a_400_naming_the_line(app_client: TestClient, row: str) -> None:
    before = _datasets(app_client)
    data = "\n".join([GOOD[0], row, GOOD[1]]).encode()
    error = error_of(_upload_dataset(app_client, "rows.jsonl", data))
    assert error["code"] == "invalid_dataset"
    assert error["message"].startswith("1 invalid row(s): line 2: "), error["message"]
    assert _datasets(app_client) == before


def test_surrogate_in_a_csv_json_cell_is_a_400(app_client: TestClient) -> None:
    data = f'text,labels\nhello,"[""a"", ""{SURROGATE}""]"\nbye,"[""b""]"\n'.encode()
    error = error_of(_upload_dataset(app_client, "rows.csv", data))
    assert error["code"] == "invalid_dataset"
    assert "line 2" in error["message"] and "\\ud800" in error["message"]
    assert _datasets(app_client) == []


def test_info_and_errors_show_no_absolute_path(app_client: TestClient, settings: Settings) -> None:
    info = app_client.get("/v1/info")
    assert info.status_code == 200
    text = info.text
    assert str(settings.store.resolve()) not in text
    base_path = str(app_client.app.state.base.path)  # type: ignore[attr-defined]
    assert base_path not in text
    assert "/tmp" not in text and "/root" not in text and "/home" not in text
    # a dataset whose rows file went missing: the error names the dataset, not its file
    created = _upload_dataset(app_client, "rows.jsonl", "\n".join(GOOD).encode())
    assert created.status_code == 201, created.text
    for leftover in (settings.store / "_datasets").glob("*.jsonl"):
        leftover.unlink()
    job = app_client.post(
        "/v1/training-jobs", json={"adapter": "j", "training_data": created.json()["id"]}
    )
    assert job.status_code >= 400, job.text
    assert str(settings.store.resolve()) not in job.text
    assert "/tmp" not in job.text


def test_every_route_of_the_app_checks_its_text(app_client: TestClient) -> None:
    from fastapi.routing import APIRoute

    from app.api.json_route import UntrustedRoute

    pending = list(app_client.app.router.routes)  # type: ignore[attr-defined]
    routes = []
    while pending:
        route = pending.pop()
        nested = getattr(route, "original_router", None)
        pending.extend(nested.routes if nested is not None else [])
        if isinstance(route, APIRoute):
            routes.append(route)
    assert len(routes) > 20
    assert [r.path for r in routes if not isinstance(r, UntrustedRoute)] == []


def test_malformed_and_duplicate_json_bodies(app_client: TestClient) -> None:
    url = "/v1/adapters/sst2/predict"
    for body in [
        '{"inputs": ["a",]}',
        '{"inputs": ["a"], "inputs": ["b"]}',
        '{"inputs": [NaN]}',
        '{"inputs": ' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"inputs": ' + "[" * 40 + "]" * 40 + "}",
    ]:
        error = error_of(post_raw(app_client, url, body), 422)
        assert error["code"] == "invalid_request"
        assert error["param"] is None, error  # FastAPI's was a character offset
    broken = error_of(post_raw(app_client, url, '{"inputs": ["a",]}'), 422)
    assert "line 1 column 17" in broken["message"]
    assert (
        "inputs"
        in error_of(post_raw(app_client, url, '{"inputs": [], "inputs": []}'), 422)["message"]
    )


ODD = ["\ud800", "\udfff", "\u2028", "\x00", "\ufeff"]
_texts = st.lists(st.one_of(st.text(max_size=5), st.sampled_from(ODD)), max_size=3).map("".join)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=6,
)
_inputs = st.one_of(
    _texts,
    st.fixed_dictionaries({"text": _texts}, optional={"text_pair": _values, "extra": _values}),
    _values,
)
_parameters = st.dictionaries(
    st.sampled_from(["top_k", "threshold", "function_to_apply", "layers", "bogus"]) | _texts,
    _values,
    max_size=3,
)
predict_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(_inputs, max_size=3)}, optional={"parameters": _parameters, "x": _values}
)


@hypothesis_settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=predict_bodies, route=st.sampled_from(["one", "many", "embeddings"]))
def test_any_predict_body_is_a_200_or_a_clean_4xx(
    app_client: TestClient, body: dict[str, Any], route: str
) -> None:
    # Predicts change nothing, so one app serves every example.
    url = {
        "one": "/v1/adapters/sst2/predict",
        "many": "/v1/predict",
        "embeddings": "/v1/embeddings",
    }
    if route == "many":
        body = {**body, "adapters": ["sst2"]}
    elif route == "embeddings":
        body = {"input": body["inputs"], **{k: v for k, v in body.items() if k != "inputs"}}
    raw = json.dumps(body, allow_nan=True)  # escapes surrogates as a client's encoder would
    response = post_raw(app_client, url[route], raw)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) >= {"code", "message", "param"}
        assert error["param"] is None or isinstance(error["param"], str)
        assert not (error["param"] or "").isdigit()  # a field, never a character offset


def test_a_body_without_a_content_type_is_checked_too(app_client: TestClient) -> None:
    # A FastAPI without strict content types parses such a body as JSON: the gate must too.
    body = f'{{"inputs": ["{SURROGATE}"]}}'.encode()
    response = app_client.post("/v1/adapters/sst2/predict", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_text"
    plain = app_client.post("/v1/adapters/sst2/predict", json={"inputs": ["fine"]})
    assert plain.status_code == 200


@given(
    st.sampled_from(["application", "Application", "text", "multipart"]),
    st.sampled_from(["json", "JSON", "ld+json", "x-www-form-urlencoded", "plain", "form-data"]),
    st.sampled_from(["", "; charset=utf-8", ";charset=UTF-8", "; boundary=x"]),
)
def test_is_json_fast_path_agrees_with_header_parsing(main: str, sub: str, params: str) -> None:
    # The literal "application/json" skips the header parser; every spelling must still agree.
    content_type = f"{main}/{sub}{params}"
    expected = main.lower() == "application" and (
        sub.lower() == "json" or sub.lower().endswith("+json")
    )
    assert is_json(content_type) is expected
    assert is_json("application/json") is True
    assert is_json(None) is True  # FastAPI may parse a body without a content type as JSON
