"""Issue 2 over HTTP on the real packaged base: train, upload, download, reject, concurrency."""

from __future__ import annotations

import io
import json
import pickle
import struct
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.client import Client
from tests.conftest import DATASETS, peft_adapter
from tests.integration.conftest import LiveServer
from tests.unit.method_adapters import mean_pooled_logits

pytestmark = pytest.mark.slow
TEXTS = [
    "a gorgeous, witty, seductive movie",
    "the plot is a mess and the acting worse",
    {"text": "it rains", "text_pair": "the street is wet"},
]


def _files_of(live: LiveServer, files: dict[str, bytes], name: str, labels: list[str]) -> Any:
    return live.http.post(
        "/v1/adapters",
        data={"name": name, "task": "classification", "labels": json.dumps(labels)},
        files={k: (k, v) for k, v in files.items() if k != "README.md"},
    )


def _store_snapshot(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file()
        and p.suffix not in (".db", ".db-wal", ".db-shm")
        and "switchyard.db" not in p.name
    }


def _peft_logits(
    model: PeftModel, tokenizer: Any, inputs: list[Any], folder: Path | None = None
) -> torch.Tensor:
    # A trained adapter's head reads the mean-pooled last layer when its config says so
    # (`pooling`, a key plain PEFT ignores); an uploaded plain PEFT adapter reads the pooler.
    config = json.loads((folder / "adapter_config.json").read_text()) if folder else {}
    pooled = "pooling" in config
    rows = []
    with torch.no_grad():
        for item in inputs:  # one by one: no padding questions
            text, pair = (
                (item, None) if isinstance(item, str) else (item["text"], item["text_pair"])
            )
            batch = tokenizer(text, pair, return_tensors="pt")
            logits = mean_pooled_logits(model, batch) if pooled else model(**batch).logits
            rows.append(logits[0])
    return torch.stack(rows)


def _served_logits(client: Client, name: str, labels: list[str], inputs: list[Any]) -> torch.Tensor:
    # The client raises (with the API's code and message) on anything but a 200.
    parameters = {"top_k": None, "function_to_apply": "none"}
    out = client.predict(name, inputs, parameters=parameters).outputs
    return torch.tensor(
        [[{o["label"]: o["score"] for o in row}[lab] for lab in labels] for row in out]
    )


def test_uploaded_peft_adapter_serves_peft_logits(
    live: LiveServer, api_client: Client, minilm_dir: Path, tmp_path: Path
) -> None:
    labels = ["neg", "neu", "pos"]
    files = peft_adapter(minilm_dir, num_labels=3, r=8, seed=1, out=tmp_path / "a")
    assert _files_of(live, files, "uploaded", labels).status_code == 201
    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    model = PeftModel.from_pretrained(base, tmp_path / "a").eval()
    expected = _peft_logits(model, AutoTokenizer.from_pretrained(minilm_dir), TEXTS)
    served = _served_logits(api_client, "uploaded", labels, TEXTS)
    assert (served - expected).abs().max().item() < 1e-4


def test_trained_adapter_reaches_accuracy_and_downloads(
    live: LiveServer, api_client: Client, minilm_dir: Path, tmp_path: Path
) -> None:
    if not (DATASETS / "sst2").is_dir():
        pytest.skip("../shared/datasets/sst2 is absent")
    train = [json.loads(x) for x in (DATASETS / "sst2/train.jsonl").read_text().splitlines()[:800]]
    dev = [json.loads(x) for x in (DATASETS / "sst2/dev.jsonl").read_text().splitlines()[:200]]
    job = live.http.post(
        "/v1/training-jobs",
        json={
            "adapter": "sst2",
            "task": "classification",
            "method": "lora",
            "examples": train,
            "hyperparameters": {"max_length": 64},
        },
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        state = live.http.get(f"/v1/training-jobs/{job_id}").json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    assert state["status"] == "succeeded", state
    response = live.http.post(
        "/v1/adapters/sst2/predict", json={"inputs": [r["text"] for r in dev]}
    )
    outputs = response.json()["outputs"]
    accuracy = sum(o[0]["label"] == r["label"] for o, r in zip(outputs, dev, strict=True)) / len(
        dev
    )
    assert accuracy >= 0.75, accuracy

    archive = live.http.get("/v1/adapters/sst2/download")
    assert archive.status_code == 200
    zipfile.ZipFile(io.BytesIO(archive.content)).extractall(tmp_path / "dl")
    labels = state_labels = live.http.get("/v1/adapters/sst2").json()["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=len(labels))
    model = PeftModel.from_pretrained(base, tmp_path / "dl").eval()
    expected = _peft_logits(
        model, AutoTokenizer.from_pretrained(minilm_dir), TEXTS, folder=tmp_path / "dl"
    )
    served = _served_logits(api_client, "sst2", state_labels, TEXTS)
    assert (served - expected).abs().max().item() < 1e-4


def _safetensors(header: dict[str, Any], payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.fixture(scope="module")
def good_files(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return peft_adapter(minilm_dir, num_labels=2, r=4, seed=2, out=tmp_path_factory.mktemp("good"))


def _bad_cases(good: dict[str, bytes], minilm_dir: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    tensors = st_load(good["adapter_model.safetensors"])
    key = next(k for k in tensors if "lora_A" in k)
    wrong_shape = {**tensors, key: torch.zeros(4, 999)}
    unknown = {**tensors, key.replace(".lora_A.", ".extra.lora_A."): tensors[key].clone()}
    nan = {**tensors, key: torch.full_like(tensors[key], float("nan"))}
    return {
        "pickle": ("x", {**good, "adapter_model.safetensors": pickle.dumps({"a": 1})}),
        "wrong_shapes": ("x", {**good, "adapter_model.safetensors": st_save(wrong_shape)}),
        "unknown_module": ("x", {**good, "adapter_model.safetensors": st_save(unknown)}),
        "nan": ("x", {**good, "adapter_model.safetensors": st_save(nan)}),
        "traversal": ("../evil", good),
        "too_large": (
            "x",
            {
                **good,
                "adapter_model.safetensors": _safetensors(
                    {
                        "w": {
                            "dtype": "F32",
                            "shape": [3 * 1024 * 1024],
                            "data_offsets": [0, 12 * 1024 * 1024],
                        }
                    },
                    bytes(12 * 1024 * 1024),
                ),
            },
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["pickle", "wrong_shapes", "unknown_module", "nan", "traversal", "too_large", "other_base"],
)
def test_bad_uploads_are_rejected_and_change_nothing(
    live: LiveServer, good_files: dict[str, bytes], minilm_dir: Path, tmp_path: Path, case: str
) -> None:
    before = _store_snapshot(live.store)
    if case == "other_base":
        from transformers import BertConfig, BertModel

        other = BertModel(
            BertConfig(
                vocab_size=30522,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
            )
        )
        other.save_pretrained(tmp_path / "other")
        name, files = "x", peft_adapter(tmp_path / "other", num_labels=2, r=4, out=tmp_path / "o")
    else:
        name, files = _bad_cases(good_files, minilm_dir)[case]
    response = live.http.post(
        "/v1/adapters",
        data={"name": name, "task": "classification", "labels": '["a","b"]'},
        files={k: (k, v) for k, v in files.items() if k != "README.md"},
    )
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert _store_snapshot(live.store) == before


def test_concurrent_predicts_each_answered_by_its_own_adapter(
    live: LiveServer, api_client: Client, minilm_dir: Path, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    expected = {}
    for i in range(4):
        files = peft_adapter(
            minilm_dir, num_labels=2, r=4 * (i + 1), seed=10 + i, out=tmp_path / f"c{i}"
        )
        assert _files_of(live, files, f"conc{i}", ["a", "b"]).status_code == 201
        base = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
        model = PeftModel.from_pretrained(base, tmp_path / f"c{i}").eval()
        expected[f"conc{i}"] = _peft_logits(model, tokenizer, TEXTS[:2])

    def call(n: int) -> tuple[str, torch.Tensor]:
        name = f"conc{n % 4}"
        return name, _served_logits(api_client, name, ["a", "b"], TEXTS[:2])

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(call, range(20)))
    for name, served in results:
        assert (served - expected[name]).abs().max().item() < 1e-4, name
