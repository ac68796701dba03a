"""Task language_modeling on tiny random models: the MLM head stored only with keep_head and
fill-mask served from it, embeddings of the adapted encoder, causal-LM adaptation of a
decoder that lowers held-out loss, a corpus streamed from a JSONL file, submit-time refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from safetensors.torch import load

from app.base import FrozenBase
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan
from tests.unit.reporters import RecordingReporter
from tests.unit.tiny_decoder import CORPUS, serving_base, tiny_llama, tiny_tokenizer

DOCS = [
    f"report {n}: the river stone moved north and the quiet town slept again" for n in range(40)
]


def _train(
    base: FrozenBase,
    *,
    corpus: str | None = None,
    reporter: RecordingReporter | None = None,
    **hp: Any,
) -> TrainingOutcome:
    plan = TrainingPlan(
        adapter="domain",
        task="language_modeling",
        method="lora",
        train_rows=[] if corpus else [{"text": d} for d in DOCS],
        validation_rows=[],
        labels=[],
        hyperparameters={"max_steps": 6, "batch_size": 8, "max_length": 32, **hp},
        corpus=corpus,
    )
    return train(
        plan,
        base=base,
        reporter=reporter or RecordingReporter(),
        cancel=CancelToken(),
        max_rank=16,
        max_tokens=64,
    )


def _head_keys(outcome: TrainingOutcome) -> list[str]:
    return [k for k in load(outcome.files["adapter_model.safetensors"]) if k.startswith("cls.")]


def test_the_mlm_head_is_discarded_unless_kept(tiny_base: FrozenBase) -> None:
    dropped = _train(tiny_base)
    assert _head_keys(dropped) == []
    assert dropped.selection["head"] == {"source": "created", "trained": True, "kept": False}
    assert dropped.history[0]["step"] == 0  # measured before training
    assert {"loss", "perplexity", "masked_accuracy"} <= set(dropped.history[-1])
    kept = _train(tiny_base, keep_head=True)
    assert sorted(_head_keys(kept)) == [
        "cls.predictions.bias",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]  # the decoder is the base's tied word embeddings: not stored


def test_a_corpus_is_streamed_from_its_jsonl_file(tiny_base: FrozenBase, tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    reporter = RecordingReporter()
    outcome = _train(tiny_base, corpus=str(path), reporter=reporter, whole_word_mask=True)
    assert outcome.selection["tokens"] > 0 and outcome.selection["steps"] == 6
    last = reporter.progress_calls[-1]  # progress counts tokens, not steps
    assert last["step"] == outcome.selection["tokens"] and last["total_steps"] >= last["step"]


def test_budget_seconds_stops_the_run_and_keeps_the_best(tiny_base: FrozenBase) -> None:
    outcome = _train(tiny_base, max_steps=100_000, budget_seconds=1.0, eval_every_steps=2)
    assert outcome.selection["steps"] < outcome.selection["planned_steps"]
    assert outcome.best and outcome.history[0]["step"] == 0


def _job(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    submitted = client.post("/v1/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    deadline = time.monotonic() + 300
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/v1/training-jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job.get("error")
    return job


def _lm_body(name: str, **hp: Any) -> dict[str, Any]:
    return {
        "adapter": name,
        "task": "language_modeling",
        "method": "lora",
        "examples": [{"text": d} for d in DOCS],
        "hyperparameters": {"max_steps": 4, "batch_size": 8, "max_length": 32, **hp},
    }


def test_fill_mask_is_served_from_a_kept_head(client: TestClient) -> None:
    job = _job(client, _lm_body("withhead", keep_head=True))
    assert job["best"]["selection"]["head"]["kept"] is True
    reply = client.post(
        "/v1/adapters/withhead/predict",
        json={"inputs": ["the river [MASK] moved", "a [MASK] town"], "parameters": {"top_k": 3}},
    )
    assert reply.status_code == 200, reply.text
    outputs = reply.json()["outputs"]
    assert [len(out) for out in outputs] == [3, 3]
    first = outputs[0][0]
    assert set(first) == {"token_str", "score", "token", "sequence"}
    assert first["sequence"].startswith("the river ") and "[MASK]" not in first["sequence"]
    scores = [o["score"] for o in outputs[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    too_many = client.post(
        "/v1/adapters/withhead/predict",
        json={"inputs": ["a [MASK]"], "parameters": {"top_k": 101}},
    )
    assert too_many.status_code == 400 and "101" in too_many.json()["error"]["message"]
    assert "100" in too_many.json()["error"]["message"]
    no_mask = client.post("/v1/adapters/withhead/predict", json={"inputs": ["no mask here"]})
    assert no_mask.status_code == 400 and no_mask.json()["error"]["code"] == "no_mask_token"


def test_without_a_head_fill_mask_is_refused_and_embeddings_are_served(
    client: TestClient,
) -> None:
    job = _job(client, _lm_body("nohead"))
    assert job["best"]["selection"]["head"]["kept"] is False
    refused = client.post("/v1/adapters/nohead/predict", json={"inputs": ["a [MASK]"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_mlm_head"
    adapted = client.post("/v1/embeddings", json={"input": ["the river"], "adapter": "nohead"})
    bare = client.post("/v1/embeddings", json={"input": ["the river"]})
    assert adapted.status_code == 200, adapted.text
    vector = adapted.json()["data"][0]["embedding"]
    assert len(vector) == len(bare.json()["data"][0]["embedding"])
    assert vector != bare.json()["data"][0]["embedding"]  # the LoRA changed the encoder


def test_submit_refuses_what_this_base_cannot_do(client: TestClient) -> None:
    prefix = client.post("/v1/training-jobs", json={**_lm_body("x"), "method": "prefix"})
    assert prefix.status_code == 400 and prefix.json()["error"]["param"] == "method"
    stride = client.post("/v1/training-jobs", json=_lm_body("x", stride=20))
    assert stride.status_code == 400 and "stride 20" in stride.json()["error"]["message"]
    mask = client.post("/v1/training-jobs", json=_lm_body("x", mask_probability=1.5))
    assert mask.status_code == 400 and mask.json()["error"]["param"].endswith("mask_probability")


def test_causal_lm_adaptation_lowers_held_out_loss() -> None:
    tok = tiny_tokenizer()
    base = serving_base(tiny_llama(tok), tok)
    plan = TrainingPlan(
        adapter="domain",
        task="language_modeling",
        method="lora",
        train_rows=[{"text": text} for text in CORPUS * 2],
        validation_rows=[],
        labels=[],
        hyperparameters={"max_steps": 30, "batch_size": 4, "learning_rate": 1e-2, "rank": 4},
    )
    torch.manual_seed(0)
    outcome = train(
        plan,
        base=base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=16,
        max_tokens=64,
    )
    before, best = outcome.history[0], outcome.metrics
    assert before["step"] == 0 and best["loss"] < 0.5 * before["loss"]
    assert best["perplexity"] < before["perplexity"]
    assert outcome.task == "generation"  # served by the generate and chat routes
    assert outcome.selection["objective"] == "causal_lm"


def test_an_uploaded_plain_text_corpus_trains_without_naming_the_task(
    client: TestClient,
) -> None:
    """The seam between the streamed upload and the streamed job: a .txt upload is stored as a
    language_modeling dataset, and a job on it (task taken from the dataset) reads the file."""
    text = "".join(f"{d}\n" for d in DOCS)
    uploaded = client.post("/v1/datasets", files={"file": ("notes.txt", text.encode())})
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert (dataset["task"], dataset["rows"], dataset["format"]) == (
        "language_modeling",
        len(DOCS),
        "text",
    )
    job = _job(
        client,
        {
            "adapter": "fromfile",
            "method": "lora",
            "training_data": dataset["id"],
            "hyperparameters": {"max_steps": 3, "batch_size": 8, "max_length": 32},
        },
    )
    assert job["task"] == "language_modeling"
    assert job["best"]["selection"]["objective"] == "masked_lm"
    assert job["progress"]["step"] > 0  # training tokens counted


def test_a_language_modeling_job_refuses_base_adapter(client: TestClient) -> None:
    """Its trainer adapts the bare base; a stack on it would silently drop the parent."""
    body = _lm_body("lm-on-top") | {"base_adapter": "anything"}
    reply = client.post("/v1/training-jobs", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_base_adapter", "base_adapter")
    assert client.get("/v1/adapters/lm-on-top").status_code == 404
