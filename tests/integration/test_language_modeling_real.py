"""Task language_modeling on the real packaged bases, over HTTP against `switchyard serve`.

MiniLM (no MLM head in its folder: a new tied head trains with the LoRA) adapts to movie
reviews by masked LM, and the job reports masked-token accuracy and perplexity before and
after; SmolLM2 adapts to a synthetic domain by next-token prediction, lowering held-out
perplexity, and the adapter then generates. Each run is capped at a few dozen steps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DATASETS
from tests.integration.conftest import LiveServer, read_rows, run_job, start_server, stop_server

pytestmark = pytest.mark.slow

PRODUCTS = ["plum", "lemon", "mango", "grape", "peach", "apple"]


def _domain_docs(count: int, *, seed: int) -> list[dict[str, str]]:
    """Warehouse log lines: a narrow domain a decoder learns in a few dozen steps."""
    rng = random.Random(seed)
    return [
        {
            "text": f"Shipment {rng.randrange(1000, 9999)}: {rng.randrange(1, 9)} crates of "
            f"{rng.choice(PRODUCTS)} left dock {rng.randrange(1, 5)} for the north warehouse."
        }
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def reviews_mlm(live: LiveServer) -> dict[str, Any]:
    """An MLM LoRA (head kept) on 400 unlabeled SST-2 reviews, uploaded as plain text."""
    texts = [r["text"] for r in read_rows(DATASETS / "sst2" / "train.jsonl", 400)]
    body = "".join(" ".join(t.split()) + "\n" for t in texts).encode()
    uploaded = live.http.post("/v1/datasets", files={"file": ("reviews.txt", body)})
    assert uploaded.status_code == 201, uploaded.text
    job: dict[str, Any] = run_job(
        live,
        {
            "adapter": "reviews-mlm",
            "method": "lora",
            "training_data": uploaded.json()["id"],
            "hyperparameters": {
                "max_steps": 40,
                "batch_size": 16,
                "max_length": 48,
                "eval_every_steps": 20,
                "learning_rate": 2e-3,
                "keep_head": True,
            },
        },
        timeout=900,
    )
    assert job["status"] == "succeeded", job.get("error")
    return job


def test_masked_lm_on_minilm_reports_before_and_after(
    live: LiveServer, reviews_mlm: dict[str, Any]
) -> None:
    job = reviews_mlm
    assert job["task"] == "language_modeling"
    before, after = job["metrics"][0], job["metrics"][-1]
    print("MiniLM masked LM before:", before, "after:", after)
    assert before["step"] == 0 and after["step"] == 40
    assert {"masked_accuracy", "perplexity", "loss"} <= set(after)
    assert after["perplexity"] < before["perplexity"]  # the new head and LoRA learned
    assert job["best"]["selection"]["head"] == {"source": "created", "trained": True, "kept": True}
    reply = live.http.post(
        "/v1/adapters/reviews-mlm/predict",
        json={"inputs": ["a [MASK] and moving film"], "parameters": {"top_k": 3}},
    )
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["outputs"][0]) == 3


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"SWITCHYARD_BASE_MODEL": "smollm2", "OMP_NUM_THREADS": "1"}
    server = start_server(tmp_path_factory.mktemp("lm-store"), env=env, timeout=600)
    yield server
    stop_server(server)


def test_causal_lm_on_smollm2_lowers_held_out_perplexity(smollm2: LiveServer) -> None:
    job: dict[str, Any] = run_job(
        smollm2,
        {
            "adapter": "warehouse-lm",
            "task": "language_modeling",
            "method": "lora",
            "examples": _domain_docs(200, seed=1),
            "hyperparameters": {
                "max_steps": 24,
                "batch_size": 8,
                "max_length": 48,
                "eval_every_steps": 12,
                "learning_rate": 2e-3,
            },
        },
        timeout=1800,  # 24 steps; on a shared 2-core box they took over 600 s
    )
    assert job["status"] == "succeeded", job.get("error")
    before, best = job["metrics"][0], job["best"]["metrics"]
    print("SmolLM2 causal LM before:", before, "best:", best)
    assert before["step"] == 0 and best["perplexity"] < 0.8 * before["perplexity"]
    reply = smollm2.http.post(
        "/v1/completions",
        json={"model": "warehouse-lm", "prompt": "Shipment 4821:", "max_tokens": 8},
    )
    assert reply.status_code == 200, reply.text


def test_a_task_adapter_stacked_on_the_mlm_adapter_reports_its_domain_effect(
    live: LiveServer, reviews_mlm: dict[str, Any]
) -> None:
    """Base + frozen domain LoRA + trained task LoRA, stored as one LoRA, served like any;
    the job also trains without the domain adapter and reports both on the same rows."""
    rows = read_rows(DATASETS / "sst2" / "train.jsonl", 1200)[800:]
    examples = [{"text": r["text"], "label": str(r["label"])} for r in rows[:96]]
    job: dict[str, Any] = run_job(
        live,
        {
            "adapter": "reviews-on-mlm",
            "task": "classification",
            "method": "lora",
            "base_adapter": "reviews-mlm",
            "examples": examples,
            "hyperparameters": {"epochs": 2},
        },
        timeout=1200,
    )
    assert job["status"] == "succeeded", job.get("error")
    effect = job["domain_effect"]
    print("domain_effect on SST-2 (96 rows, 40-step MLM LoRA):", effect)
    assert effect["metric"] == "accuracy"
    assert 0.0 <= effect["with"] <= 1.0 and 0.0 <= effect["without"] <= 1.0
    served = live.http.get("/v1/adapters/reviews-on-mlm").json()
    assert served["versions"][-1]["lineage"]["parent"]["adapter"] == "reviews-mlm"
    reply = live.http.post(
        "/v1/adapters/reviews-on-mlm/predict", json={"inputs": ["a moving, lovely film"]}
    )
    assert reply.status_code == 200, reply.text
    refused = live.http.delete("/v1/adapters/reviews-mlm")
    assert refused.status_code == 409 and "reviews-on-mlm" in refused.json()["error"]["message"]
