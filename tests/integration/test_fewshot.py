"""Issue 18 on the real packaged base over HTTP: with 16 rows a class, the default job (no
method named: `auto`) is at least as good as a logistic regression on the same base's frozen
mean-pooled features, fitted here on the same rows."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

from tests.conftest import DATASETS
from tests.integration.conftest import LiveServer, read_rows, run_job

PER_CLASS = 16
TEST_ROWS = 300


def _sample(rows: list[dict[str, Any]], per_class: int, seed: int) -> list[dict[str, Any]]:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    rng = random.Random(seed)
    return [r for label in sorted(by_label) for r in rng.sample(by_label[label], per_class)]


@torch.no_grad()
def _features(folder: Path, texts: list[str]) -> np.ndarray:
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    parts = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start : start + 64], padding=True, return_tensors="pt")
        hidden = model.eval()(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        parts.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(parts)


def test_the_default_job_beats_a_logistic_regression_at_16_rows_a_class(
    live: LiveServer, minilm_dir: Path
) -> None:
    if not (DATASETS / "trec").is_dir():
        pytest.skip("../shared/datasets/trec is absent")
    train = _sample(read_rows(DATASETS / "trec/train.jsonl"), PER_CLASS, seed=0)
    test = read_rows(DATASETS / "trec/test.jsonl")
    random.Random(1).shuffle(test)
    test = test[:TEST_ROWS]
    texts = [r["text"] for r in test]
    gold = [r["label"] for r in test]

    regression = LogisticRegression(max_iter=2000).fit(
        _features(minilm_dir, [r["text"] for r in train]), [r["label"] for r in train]
    )
    baseline = float(np.mean(regression.predict(_features(minilm_dir, texts)) == np.array(gold)))

    started = time.monotonic()
    body: dict[str, object] = {
        "adapter": "trec-few",
        "examples": [{"text": r["text"], "label": r["label"]} for r in train],
    }
    job = run_job(live, body)
    seconds = time.monotonic() - started
    assert job["status"] == "succeeded", job
    assert job["method"] == "auto" and job["candidates"]
    outputs: list[Any] = []
    for start in range(0, len(texts), 100):
        response = live.http.post(
            "/v1/adapters/trec-few/predict", json={"inputs": texts[start : start + 100]}
        )
        assert response.status_code == 200, response.text
        outputs += response.json()["outputs"]
    accuracy = float(np.mean([o[0]["label"] == g for o, g in zip(outputs, gold, strict=True)]))
    candidates = cast(list[dict[str, Any]], job["candidates"])
    table = [(c["method"], c["value"], c["seconds"]) for c in candidates]
    print(f"TREC 16/class: auto {accuracy:.3f} vs logistic regression {baseline:.3f}; "
          f"{seconds:.0f} s; candidates {table}")  # fmt: skip
    assert accuracy >= baseline, (accuracy, baseline, table)
