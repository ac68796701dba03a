"""Leniency that hid mistakes, offline docs, the upload's OpenAPI body, and the body deadline.

Each was a black-box finding: a misspelt parameter silently gave the default, `"yes"` pinned an
adapter, `/docs` was blank without internet, generated clients could not upload, and a client
trickling its body held a connection for as long as it liked.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from tests.conftest import peft_adapter, upload


@pytest.fixture(scope="module")
def adapter_files(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    return peft_adapter(tiny_bert_dir, num_labels=2, out=tmp_path_factory.mktemp("strict"))


@pytest.fixture
def app_client(
    settings: Settings, tiny_base: FrozenBase, adapter_files: dict[str, bytes]
) -> Iterator[TestClient]:
    with TestClient(create_app(settings, base=tiny_base)) as client:
        assert upload(client, "sst2", adapter_files, labels=["neg", "pos"]).status_code == 201
        tags = upload(
            client, "tags", adapter_files, task="multi_label_classification", labels=["a", "b"]
        )
        assert tags.status_code == 201, tags.text
        yield client


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    """The error of a refused request, checked to be in API.md's shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message", "param"}
    return body["error"]


@pytest.mark.parametrize(
    ("adapter", "parameters", "param"),
    [
        ("sst2", {"top-k": 2}, "parameters.top-k"),
        ("sst2", {"threshold": 0.3}, "parameters.threshold"),  # multi-label only
        ("tags", {"top_k": 1}, "parameters.top_k"),  # single-label only
    ],
)
def test_a_parameter_the_task_does_not_read_is_a_400(
    app_client: TestClient, adapter: str, parameters: dict[str, Any], param: str
) -> None:
    url = f"/v1/adapters/{adapter}/predict"
    error = error_of(app_client.post(url, json={"inputs": ["a"], "parameters": parameters}))
    assert (error["code"], error["param"]) == ("invalid_parameter", param)


def test_parameters_each_task_reads_still_pass(app_client: TestClient) -> None:
    single = {"top_k": None, "function_to_apply": "none"}
    ok = app_client.post("/v1/adapters/sst2/predict", json={"inputs": ["a"], "parameters": single})
    assert ok.status_code == 200, ok.text
    multi = {"threshold": 0.1, "function_to_apply": "sigmoid"}
    ok = app_client.post("/v1/adapters/tags/predict", json={"inputs": ["a"], "parameters": multi})
    assert ok.status_code == 200, ok.text
    # Several adapters: a parameter any of their tasks reads is accepted, others are not.
    both = {"adapters": ["sst2", "tags"], "inputs": ["a"]}
    ok = app_client.post("/v1/predict", json={**both, "parameters": {"top_k": 1, "threshold": 0.2}})
    assert ok.status_code == 200, ok.text
    bad = app_client.post("/v1/predict", json={**both, "parameters": {"topk": 1}})
    assert error_of(bad)["param"] == "parameters.topk"


def test_an_extra_key_in_an_input_object_is_a_400(app_client: TestClient) -> None:
    body = {"inputs": ["a", {"text": "b", "text_pair": "c", "pair": "d"}]}
    error = error_of(app_client.post("/v1/adapters/sst2/predict", json=body))
    assert (error["code"], error["param"]) == ("invalid_input", "inputs[1].pair")


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None])
def test_pinned_takes_only_a_json_boolean(app_client: TestClient, value: Any) -> None:
    error = error_of(app_client.patch("/v1/adapters/sst2", json={"pinned": value}), 422)
    assert error["param"] == "pinned"
    assert app_client.patch("/v1/adapters/sst2", json={"pinned": True}).json()["pinned"] is True


def test_embeddings_of_an_empty_list_is_a_400(app_client: TestClient) -> None:
    error = error_of(app_client.post("/v1/embeddings", json={"input": []}))
    assert error["param"] == "input"


def test_a_raw_line_separator_inside_a_jsonl_string_keeps_the_row_whole(
    app_client: TestClient,
) -> None:
    rows = [
        {"text": "one\u2028two\u2029three\x85four", "label": "pos"},
        {"text": "b", "label": "neg"},
    ]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
    created = app_client.post("/v1/datasets", files={"file": ("rows.jsonl", data)})
    assert created.status_code == 201, created.text
    assert created.json()["rows"] == 2
    crlf = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\r\n"
    again = app_client.post("/v1/datasets", files={"file": ("crlf.jsonl", crlf)})
    assert again.status_code == 201, again.text
    assert again.json()["rows"] == 2


def test_an_unterminated_csv_quote_is_a_400_naming_its_line(app_client: TestClient) -> None:
    data = b'text,label\nfine,pos\n"never closed,neg\nbad,neg\nworse,neg\n'
    error = error_of(app_client.post("/v1/datasets", files={"file": ("rows.csv", data)}))
    assert error["code"] == "invalid_dataset"
    assert "line 3" in error["message"], error["message"]
    assert app_client.get("/v1/datasets").json()["data"] == []


def test_docs_reference_only_this_app(app_client: TestClient) -> None:
    page = app_client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    assert [u for u in urls if not u.startswith("/")] == []
    assert not re.search(r"https?://", page.text), page.text
    for url in urls:
        asset = app_client.get(url)
        assert asset.status_code == 200, url
    script = app_client.get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"]
    assert app_client.get("/redoc").status_code == 404


def test_the_openapi_documents_the_upload_body(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    body = spec["paths"]["/v1/adapters"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == {
        "name",
        "task",
        "labels",
        "base_fingerprint",
        "adapter_config.json",
        "adapter_model.safetensors",
        "switchyard.json",
    }
    assert schema["properties"]["adapter_model.safetensors"]["format"] == "binary"
    assert set(schema["required"]) == {"name", "adapter_config.json", "adapter_model.safetensors"}


@pytest.fixture
def live_url(tmp_path: Path, tiny_base: FrozenBase) -> Iterator[tuple[str, int]]:
    """The app under a real uvicorn on a free port, with a 0.5 s body deadline."""
    settings = Settings(store=tmp_path / "store", body_read_timeout_s=0.5, _env_file=None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings, base=tiny_base)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(10)


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_body_that_does_not_arrive_in_time_is_a_408(live_url: tuple[str, int]) -> None:
    with socket.create_connection(live_url, timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"input": '
        )
        started = time.monotonic()
        reply = _reply(sock)
        waited = time.monotonic() - started
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert 0.4 < waited < 5, waited


def test_a_body_sent_in_time_in_pieces_passes(live_url: tuple[str, int]) -> None:
    body = b'{"input": "hello there"}'
    with socket.create_connection(live_url, timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 8):
            sock.sendall(body[i : i + 8])
            time.sleep(0.02)  # 0.06 s in all, well inside the 0.5 s body deadline
        reply = _reply(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]


def test_the_deadline_covers_the_body_only() -> None:
    """A stream waiting for the client to leave (SSE) outlives the body deadline."""
    import asyncio

    from app.api.limits import BodyLimitMiddleware

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.3)  # past the deadline, after the body
        seen.append((await receive())["type"])
        await send({"type": "http.response.body", "body": b"done"})

    messages = [
        {"type": "http.request", "body": b"a", "more_body": True},
        {"type": "http.request", "body": b"b", "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Any:
        return messages.pop(0)

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    limited = BodyLimitMiddleware(app, body_bytes=1024, upload_bytes=1024, read_timeout_s=0.1)
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(limited(scope, receive, send))
    assert seen == ["http.disconnect"]
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b"done"


@pytest.mark.parametrize("field", ["body_read_timeout_s", "keep_alive_timeout_s"])
def test_timeouts_are_validated_at_start(tmp_path: Path, field: str) -> None:
    from pydantic import ValidationError

    overrides: dict[str, Any] = {field: 0}
    with pytest.raises(ValidationError, match=field):
        Settings(store=tmp_path, _env_file=None, **overrides)
