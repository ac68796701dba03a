"""Cross-validation of a per-token task: its logits do not pool across rows, so the folds' own
evaluations are averaged. Before the fix, `auto` on fewer than 50 token rows crashed with
`max() arg is an empty sequence` (found by tests/unit/test_plugin_contract.py)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad"]


def _wait(client: TestClient, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/v1/training-jobs/{job['id']}").json()
    return job


def test_auto_cross_validates_a_token_task(client: TestClient) -> None:
    examples = [
        {"tokens": [WORDS[n % 8], "film"], "tags": ["POS" if n % 8 < 4 else "NEG", "O"]}
        for n in range(24)
    ]
    body = {
        "adapter": "tags",
        "task": "token_classification",
        "method": "auto",
        "examples": examples,
        "hyperparameters": {"epochs": 2, "batch_size": 8, "seed": 0},
    }
    submitted = client.post("/v1/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    job = _wait(client, submitted.json())
    assert job["status"] == "succeeded", job.get("error")
    assert job["selection"]["rule"] == "cross_validation"
    measured = [row for row in job["candidates"] if row["status"] == "measured"]
    assert measured and all(0.0 <= row["value"] <= 1.0 for row in measured)
