"""The adapter and inference API over HTTP on the tiny base, checked against plain PEFT."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from tests.conftest import peft_adapter, upload
from tests.unit.peft_reference import as_vector, peft_logits, peft_model

# What the TestClient returns (httpx's or httpx2's Response, by starlette version).
Reply = Any
TEXTS = ["what a wonderful day", "this is terrible", "ok", "the cat sat on the mat today"]
ALL = {"top_k": None}


@dataclass
class Ref:
    """An adapter made with plain PEFT, and what PEFT computes with it."""

    name: str
    folder: Path
    files: dict[str, bytes]
    labels: list[str]
    task: str
    base_dir: Path
    tokenizer: PreTrainedTokenizerBase
    models: dict[str, PeftModel] = field(default_factory=dict)

    def logits(self, inputs: list[Any]) -> torch.Tensor:
        if "m" not in self.models:
            self.models["m"] = peft_model(self.base_dir, self.folder, max(1, len(self.labels)))
        return peft_logits(self.models["m"], self.tokenizer, inputs)

    def probs(self, inputs: list[Any]) -> torch.Tensor:
        return torch.softmax(self.logits(inputs), dim=-1)


@pytest.fixture(scope="module")
def refs(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Ref]:
    work = tmp_path_factory.mktemp("api-adapters")
    specs: list[tuple[str, int, int, Any, str]] = [
        ("sst2", 2, 4, "all-linear", "classification"),
        ("topic", 3, 8, ["query", "value"], "classification"),
        ("intent", 4, 2, ["dense"], "classification"),
        ("five", 5, 4, ["key", "output.dense"], "classification"),
        ("sst2v2", 2, 4, "all-linear", "classification"),
        ("stsb", 1, 4, "all-linear", "regression"),
        ("tags", 3, 4, "all-linear", "multi_label_classification"),
    ]
    out = {}
    for seed, (name, n, r, targets, task) in enumerate(specs):
        files = peft_adapter(
            tiny_bert_dir, num_labels=n, r=r, seed=seed, target_modules=targets, out=work / name
        )
        labels = [] if task == "regression" else [f"{name}_{i}" for i in range(n)]
        out[name] = Ref(name, work / name, files, labels, task, tiny_bert_dir, tokenizer)
    return out


def put(client: TestClient, ref: Ref, name: str | None = None) -> Reply:
    response = upload(client, name or ref.name, ref.files, task=ref.task, labels=ref.labels or None)
    return response


def predict(
    client: TestClient,
    name: str,
    inputs: list[Any],
    params: dict[str, Any] | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    url = f"/v1/adapters/{name}/predict" + (f"?version={version}" if version else "")
    response = client.post(url, json={"inputs": inputs, "parameters": params or {}})
    assert response.status_code == 200, response.text
    return response.json()


def served(outputs: list[Any], labels: list[str]) -> torch.Tensor:
    return torch.stack([as_vector(o, labels) for o in outputs])


def assert_error(response: Reply, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


# ---------------------------------------------------------------- adapters
def test_upload_versions_list_and_details(client: TestClient, refs: dict[str, Ref]) -> None:
    first = put(client, refs["sst2"])
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["name"], body["version"], body["task"], body["method"]) == (
        "sst2",
        1,
        "classification",
        "lora",
    )
    assert body["labels"] == refs["sst2"].labels and body["base_fingerprint"].startswith("sha256:")
    second = put(client, refs["sst2v2"], name="sst2")
    assert second.status_code == 201 and second.json()["version"] == 2

    listing = client.get("/v1/adapters").json()["data"]
    assert [item["name"] for item in listing] == ["sst2"]
    item = listing[0]
    assert item["latest_version"] == 2 and item["method"] == "lora"
    assert item["labels"] == refs["sst2v2"].labels and item["size_bytes"] > 0
    assert item["resident"] in ("device", "cpu", "disk") and item["pinned"] is False
    assert item["created_at"]
    details = client.get("/v1/adapters/sst2").json()
    assert [v["version"] for v in details["versions"]] == [1, 2]
    assert details["versions"][0]["lineage"]["source"] == "upload"


def test_download_loads_with_plain_peft(
    client: TestClient,
    refs: dict[str, Ref],
    tmp_path: Path,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    ref = refs["topic"]
    assert put(client, ref).status_code == 201
    assert put(client, refs["sst2"], name="topic").status_code == 201  # a v2 with 2 labels
    service = predict(client, "topic", TEXTS, {**ALL, "function_to_apply": "none"}, version=1)
    response = client.get("/v1/adapters/topic/download?version=1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
        assert archive.read("adapter_model.safetensors") == ref.files["adapter_model.safetensors"]
        archive.extractall(tmp_path / "unzipped")
    model = peft_model(tiny_bert_dir, tmp_path / "unzipped", 3)
    downloaded = peft_logits(model, tokenizer, TEXTS)
    assert (served(service["outputs"], ref.labels) - downloaded).abs().max() < 1e-5
    latest = client.get("/v1/adapters/topic/download")
    with zipfile.ZipFile(io.BytesIO(latest.content)) as archive:
        assert json.loads(archive.read("switchyard.json"))["version"] == 2


def test_delete_one_version_then_all(client: TestClient, refs: dict[str, Ref]) -> None:
    put(client, refs["sst2"])
    put(client, refs["sst2v2"], name="sst2")
    predict(client, "sst2", TEXTS[:1], version=1)  # resident while deleted
    response = client.delete("/v1/adapters/sst2?version=1")
    assert response.status_code == 200 and response.json()["deleted_versions"] == [1]
    assert [v["version"] for v in client.get("/v1/adapters/sst2").json()["versions"]] == [2]
    error = assert_error(
        client.post("/v1/adapters/sst2/predict?version=1", json={"inputs": ["x"]}),
        404,
        "version_not_found",
    )
    assert error["param"] == "version"
    assert predict(client, "sst2", ["x"])["version"] == 2
    assert client.delete("/v1/adapters/sst2").json()["deleted_versions"] == [2]
    assert client.get("/v1/adapters").json()["data"] == []
    assert_error(client.get("/v1/adapters/sst2"), 404, "adapter_not_found")
    assert_error(
        client.post("/v1/adapters/sst2/predict", json={"inputs": ["x"]}), 404, "adapter_not_found"
    )
    # the same name again, other weights: a new number (never reused), no stale copy served
    assert put(client, refs["sst2v2"], name="sst2").json()["version"] == 3
    fresh = predict(client, "sst2", TEXTS, ALL)["outputs"]
    assert (served(fresh, refs["sst2v2"].labels) - refs["sst2v2"].probs(TEXTS)).abs().max() < 1e-5


def test_delete_racing_a_batch_leaves_no_stale_copy(
    client: TestClient, refs: dict[str, Ref], monkeypatch: pytest.MonkeyPatch
) -> None:
    put(client, refs["sst2"])
    cache = client.app.state.runtime.cache  # type: ignore[attr-defined]
    store = client.app.state.registry.store  # type: ignore[attr-defined]
    real_hide = store.hide

    def delete_while_a_batch_runs(name: str, version: int | None = None) -> list[int]:
        cache.release(cache.acquire(name, 1))  # a request queued before the DELETE
        return real_hide(name, version)

    monkeypatch.setattr(store, "hide", delete_while_a_batch_runs)
    assert client.delete("/v1/adapters/sst2").status_code == 200
    monkeypatch.undo()
    assert cache.residency("sst2", 1) == "disk"
    assert put(client, refs["sst2v2"], name="sst2").json()["version"] == 2  # never reused
    fresh = predict(client, "sst2", TEXTS, ALL)["outputs"]
    assert (served(fresh, refs["sst2v2"].labels) - refs["sst2v2"].probs(TEXTS)).abs().max() < 1e-5


def test_patch_pinned(client: TestClient, refs: dict[str, Ref]) -> None:
    put(client, refs["sst2"])
    response = client.patch("/v1/adapters/sst2", json={"pinned": True})
    assert response.status_code == 200, response.text
    assert response.json()["pinned"] is True and response.json()["resident"] == "device"
    assert client.get("/v1/adapters").json()["data"][0]["pinned"] is True
    assert client.patch("/v1/adapters/sst2", json={"pinned": False}).json()["pinned"] is False
    assert_error(client.patch("/v1/adapters/sst2", json={"pinned": [1]}), 422, "invalid_request")
    assert_error(
        client.patch("/v1/adapters/sst2", json={"pinned": True, "x": 1}), 422, "invalid_request"
    )
    assert_error(
        client.patch("/v1/adapters/ghost", json={"pinned": True}), 404, "adapter_not_found"
    )


def test_unknown_adapter_is_404_everywhere(client: TestClient) -> None:
    error = assert_error(
        client.post("/v1/adapters/ghost/predict", json={"inputs": ["x"]}), 404, "adapter_not_found"
    )
    assert error["param"] == "name"
    for response in (
        client.get("/v1/adapters/ghost"),
        client.delete("/v1/adapters/ghost"),
        client.get("/v1/adapters/ghost/download"),
    ):
        assert_error(response, 404, "adapter_not_found")
    assert_error(
        client.post("/v1/adapters/Ghost/predict", json={"inputs": ["x"]}), 400, "invalid_name"
    )


# ---------------------------------------------------------------- predict
def test_predict_top_k_pairs_and_versions(client: TestClient, refs: dict[str, Ref]) -> None:
    ref, newer = refs["intent"], refs["five"]
    put(client, ref)
    one = predict(client, "intent", TEXTS)
    assert one["adapter"] == "intent" and one["version"] == 1 and len(one["outputs"]) == 4
    expected = ref.probs(TEXTS)
    for out, row in zip(one["outputs"], expected, strict=True):
        assert len(out) == 1 and out[0]["label"] == ref.labels[int(row.argmax())]
        assert abs(out[0]["score"] - float(row.max())) < 1e-5
    two = predict(client, "intent", TEXTS, {"top_k": 2})["outputs"]
    for out, row in zip(two, expected, strict=True):
        top = row.topk(2)
        assert [o["label"] for o in out] == [ref.labels[int(i)] for i in top.indices]
        assert out[0]["score"] >= out[1]["score"]
    every = predict(client, "intent", TEXTS, ALL)["outputs"]
    assert (served(every, ref.labels) - expected).abs().max() < 1e-5

    pairs = [
        {"text": "a man plays", "text_pair": "someone makes music"},
        {"text": "no pair here"},
        "plain string",
    ]
    got = served(predict(client, "intent", pairs, ALL)["outputs"], ref.labels)
    assert (got - ref.probs(pairs)).abs().max() < 1e-5
    assert (got[0] - ref.probs(["a man plays"])[0]).abs().max() > 1e-6  # the pair mattered

    put(client, newer, name="intent")
    latest = predict(client, "intent", TEXTS, ALL)
    assert latest["version"] == 2
    assert (served(latest["outputs"], newer.labels) - newer.probs(TEXTS)).abs().max() < 1e-5
    old = predict(client, "intent", TEXTS, ALL, version=1)
    assert old["version"] == 1
    assert (served(old["outputs"], ref.labels) - expected).abs().max() < 1e-5


def test_bad_predict_requests(client: TestClient, refs: dict[str, Ref]) -> None:
    put(client, refs["sst2"])
    url = "/v1/adapters/sst2/predict"
    assert_error(client.post(url, json={"inputs": []}), 422, "invalid_request")
    assert_error(client.post(url, json={"inputs": [7]}), 422, "invalid_request")
    assert_error(client.post(url, json={"inputs": [{"txt": "x"}]}), 400, "invalid_input")
    broken = client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(broken, 422, "invalid_request")
    error = assert_error(
        client.post(url, json={"inputs": ["x"], "parameters": {"top_k": 0}}),
        400,
        "invalid_parameter",
    )
    assert error["param"] == "parameters.top_k"
    error = assert_error(client.post(url, json={"inputs": ["x"] * 257}), 413, "too_many_inputs")
    assert error["param"] == "inputs"
    assert predict(client, "sst2", ["still fine"])["outputs"]


def test_input_longer_than_the_base_positions_is_truncated(
    client: TestClient, refs: dict[str, Ref]
) -> None:
    ref = refs["sst2"]
    put(client, ref)
    response = client.post(
        "/v1/adapters/sst2/predict", json={"inputs": ["word " * 300, "short"], "parameters": ALL}
    )
    assert response.status_code == 200, response.text
    got = served(response.json()["outputs"], ref.labels)
    # 128 positions: [CLS] + 126 words + [SEP]
    assert (got - ref.probs(["word " * 126, "short"])).abs().max() < 1e-5


def test_concurrent_predicts_each_answered_by_its_own_adapter(
    client: TestClient, refs: dict[str, Ref]
) -> None:
    names = ["sst2", "topic", "intent", "five"]
    for name in names:
        assert put(client, refs[name]).status_code == 201
    expected = {name: refs[name].probs(TEXTS) for name in names}
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    runtime.encoder_batcher.max_wait = 0.05  # let concurrent requests meet in batches

    def call(i: int) -> tuple[str, list[int], dict[str, Any]]:
        name = names[i % 4]
        rows = [(i + k) % len(TEXTS) for k in range(1 + i % 3)]
        body = predict(client, name, [TEXTS[r] for r in rows], ALL)
        return name, rows, body

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(call, range(20)))
    for name, rows, body in answers:
        assert body["adapter"] == name
        got = served(body["outputs"], refs[name].labels)
        assert (got - expected[name][rows]).abs().max() < 1e-5, name
    # and some batch did mix adapters (distinct adapters per batch summed > batches)
    sample = runtime.metrics.registry.get_sample_value
    assert sample("switchyard_batch_adapters_sum") > sample("switchyard_batch_adapters_count")


def test_predict_many(client: TestClient, refs: dict[str, Ref]) -> None:
    names = ["sst2", "topic", "stsb"]
    for name in names:
        put(client, refs[name])
    response = client.post(
        "/v1/predict", json={"adapters": names, "inputs": TEXTS, "parameters": ALL}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(results) == sorted(names)
    for name in ("sst2", "topic"):
        assert results[name]["version"] == 1
        got = served(results[name]["outputs"], refs[name].labels)
        assert (got - refs[name].probs(TEXTS)).abs().max() < 1e-5
    scores = torch.tensor([o["score"] for o in results["stsb"]["outputs"]])
    assert (scores - refs["stsb"].logits(TEXTS)[:, 0]).abs().max() < 1e-5
    assert_error(
        client.post("/v1/predict", json={"adapters": ["sst2", "sst2"], "inputs": ["x"]}),
        400,
        "duplicate_adapter",
    )
    assert_error(
        client.post("/v1/predict", json={"adapters": ["sst2", "ghost"], "inputs": ["x"]}),
        404,
        "adapter_not_found",
    )


def test_regression_and_multi_label_shapes(client: TestClient, refs: dict[str, Ref]) -> None:
    assert put(client, refs["stsb"]).status_code == 201
    assert put(client, refs["tags"]).status_code == 201
    reg = predict(client, "stsb", TEXTS)["outputs"]
    assert all(set(o) == {"score"} and isinstance(o["score"], float) for o in reg)
    expected = refs["stsb"].logits(TEXTS)[:, 0]
    assert (torch.tensor([o["score"] for o in reg]) - expected).abs().max() < 1e-5

    tags = refs["tags"]
    every = predict(client, "tags", TEXTS, {"threshold": 0.0})["outputs"]
    sigmoid = torch.sigmoid(tags.logits(TEXTS))
    assert (served(every, tags.labels) - sigmoid).abs().max() < 1e-5
    for out in predict(client, "tags", TEXTS)["outputs"]:
        assert isinstance(out, list)
        assert all(set(o) == {"label", "score"} and o["score"] >= 0.5 for o in out)
        assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    wrong = upload(
        client, "tags2", tags.files, task="multi_label_classification", labels=["only", "two"]
    )
    assert_error(wrong, 400, "shape_mismatch")


# ---------------------------------------------------------------- embeddings, health, limits
def test_embeddings(
    client: TestClient,
    refs: dict[str, Ref],
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    response = client.post("/v1/embeddings", json={"input": TEXTS[:2]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "tiny-bert"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    vectors = torch.tensor([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 32)
    assert (vectors.norm(dim=-1) - 1).abs().max() < 1e-5
    tokens = [len(tokenizer(t)["input_ids"]) for t in TEXTS[:2]]
    assert body["usage"]["prompt_tokens"] == sum(tokens)
    bare = BertModel.from_pretrained(tiny_bert_dir).eval()
    with torch.inference_mode():
        for text, vector in zip(TEXTS[:2], vectors, strict=True):
            hidden = bare(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            assert (F.normalize(hidden.mean(0), dim=-1) - vector).abs().max() < 1e-5

    single = client.post("/v1/embeddings", json={"input": TEXTS[0], "normalize": False}).json()
    assert (
        len(single["data"]) == 1
        and abs(torch.tensor(single["data"][0]["embedding"]).norm() - 1) > 1e-3
    )
    put(client, refs["sst2"])
    adapted = client.post("/v1/embeddings", json={"input": TEXTS[:2], "adapter": "sst2"}).json()
    assert adapted["model"] == "sst2"
    other = torch.tensor([d["embedding"] for d in adapted["data"]])
    assert (other - vectors).abs().max() > 1e-4
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "layers": [99]}), 400, "invalid_layer"
    )
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "adapter": "ghost"}),
        404,
        "adapter_not_found",
    )


def test_health_and_metrics(client: TestClient, refs: dict[str, Ref]) -> None:
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    put(client, refs["sst2"])
    predict(client, "sst2", TEXTS)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for metric in (
        "switchyard_requests_total",
        "switchyard_request_latency_seconds_bucket",
        "switchyard_batch_rows_bucket",
        "switchyard_adapter_loads_total",
        "switchyard_resident_bytes",
        "switchyard_queue_rows",
    ):
        assert metric in text, metric
    assert 'switchyard_requests_total{adapter="sst2",status="ok"} 1.0' in text


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.put("/v1/adapters"), 405, "method_not_allowed")


@pytest.fixture
def small_client(tmp_path: Path, tiny_base: FrozenBase) -> Iterator[TestClient]:
    settings = Settings(
        store=tmp_path / "store", max_body_bytes=4096, max_upload_bytes=65536, _env_file=None
    )
    with TestClient(create_app(settings, base=tiny_base)) as client:
        yield client


def test_body_over_max_body_bytes_is_413(small_client: TestClient) -> None:
    big = {"inputs": ["x" * 100] * 60}
    error = assert_error(
        small_client.post("/v1/adapters/any/predict", json=big), 413, "payload_too_large"
    )
    assert "4096" in error["message"]

    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(100):
            yield b'"' + b"y" * 100 + b'",'
        yield b'"z"]}'

    streamed = small_client.post(
        "/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(streamed, 413, "payload_too_large")
    # calling a JSON route "multipart" does not buy it the upload limit
    disguised = small_client.post(
        "/v1/embeddings",
        content=b"-" * 20000,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert_error(disguised, 413, "payload_too_large")
    assert small_client.post("/v1/embeddings", json={"input": "small"}).status_code == 200
