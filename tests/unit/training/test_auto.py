"""`method: "auto"` (app/training/auto.py), the default when a job names no method: it measures
its candidates by the job's selection rule, trains the winner, lists the comparison in the job,
keeps to `budget_seconds`, and the adapter it registers serves calibrated scores."""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.training import auto
from app.training.auto import MARGIN_SE, candidates_for, choose, preferred_method
from app.training.types import TrainingPlan
from tests.unit.training.test_contrastive import wait
from tests.unit.training.test_trainer import rows


def submit(client: TestClient, name: str, count: int, **hp: Any) -> dict[str, Any]:
    body = {"adapter": name, "examples": rows(count, 0), "hyperparameters": {"seed": 0, **hp}}
    submitted = client.post("/v1/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["method"] == "auto"  # no method named: auto
    job = wait(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    return job


def test_auto_measures_its_candidates_and_registers_the_best(client: TestClient) -> None:
    job = submit(client, "picked", 40, epochs=3)
    table = job["candidates"]
    assert [row["method"] for row in table] == ["linear_probe", "contrastive", "lora"]
    measured = [row for row in table if row["status"] == "measured"]
    assert len(measured) == 3 and all(row["metric"] == "accuracy" for row in measured)
    assert all(isinstance(row["seconds"], float) and row["seconds"] >= 0 for row in table)
    chosen = [row for row in table if row["chosen"]]
    assert len(chosen) == 1
    # The rule of choose(): contrastive is preferred at 20 rows a class, all 40 rows judged.
    expected, _why = choose(
        [(row["method"], row["value"]) for row in measured],
        preferred="contrastive",
        judged_rows=40,
    )
    assert chosen[0]["method"] == expected
    assert job["selection"]["method"] == chosen[0]["method"]
    assert job["selection"]["rule"] == "cross_validation"
    adapter = client.get("/v1/adapters/picked").json()
    catalog_method = {"linear_probe": "linear_probe", "contrastive": "contrastive", "lora": "lora"}
    assert adapter["method"] == catalog_method[chosen[0]["method"]]
    answer = client.post("/v1/adapters/picked/predict", json={"inputs": ["good great"]})
    assert answer.status_code == 200, answer.text


def test_the_registered_adapter_is_calibrated(client: TestClient) -> None:
    job = submit(client, "calibrated", 40, epochs=2)
    metrics = job["best"]["metrics"]
    assert 0.0 <= metrics["ece"] <= 1.0 and 0.0 <= metrics["ece_uncalibrated"] <= 1.0
    temperature = job["best"]["temperature"]
    archive = client.get("/v1/adapters/calibrated/download")
    assert archive.status_code == 200
    config = json.loads(zipfile.ZipFile(io.BytesIO(archive.content)).read("adapter_config.json"))
    assert math.isclose(config["switchyard_temperature"], temperature, rel_tol=1e-3)


def test_budget_spent_skips_the_remaining_candidates(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each clock reading is a minute later: after the probe the 30 s budget is gone."""
    ticks = iter(range(0, 10**6, 60))
    monkeypatch.setattr(auto, "clock", lambda: float(next(ticks)))
    job = submit(client, "thrifty", 40, budget_seconds=30)
    table = job["candidates"]
    assert table[0]["method"] == "linear_probe" and table[0]["chosen"] is True
    assert [row["status"].split(":")[0] for row in table[1:]] == ["skipped", "skipped"]
    assert "of 30 s spent" in table[1]["status"]


def plan(task: str, count: int, labels: list[str]) -> TrainingPlan:
    return TrainingPlan(
        adapter="x",
        task=task,
        method="auto",
        train_rows=[{}] * count,
        validation_rows=[],
        labels=labels,
    )


def test_candidates_follow_the_task_and_the_rows_a_class() -> None:
    assert candidates_for(plan("classification", 40, ["a", "b"])) == [
        "linear_probe",
        "contrastive",
        "lora",
    ]
    assert candidates_for(plan("classification", 400, ["a", "b"])) == ["linear_probe", "lora"]
    assert candidates_for(plan("regression", 40, [])) == ["linear_probe", "lora"]
    assert candidates_for(plan("token_classification", 40, ["O", "B-X"])) == [
        "linear_probe",
        "lora",
    ]
    assert candidates_for(plan("generation", 40, [])) == ["lora"]


def test_the_preferred_method_stands_unless_clearly_beaten() -> None:
    """16 rows judged: a 0.25 lead is within two standard errors (about 0.33), so the
    preferred method stays; with 400 rows the same lead is far outside them."""
    measured = [("linear_probe", 0.75), ("contrastive", 0.5), ("lora", 0.56)]
    assert choose(measured, preferred="contrastive", judged_rows=16)[0] == "contrastive"
    winner, why = choose(measured, preferred="contrastive", judged_rows=400)
    assert winner == "linear_probe" and f"> {MARGIN_SE:g} x" in why
    # Ties and missing values: the first finite one; the preferred one absent: the first.
    assert choose([("a", 0.5), ("b", 0.5)], preferred="zzz", judged_rows=10**6)[0] == "a"
    nan = float("nan")
    assert choose([("a", nan), ("b", 0.4)], preferred="a", judged_rows=10)[0] == "b"
    assert choose([("a", nan)], preferred="a", judged_rows=10)[0] == "a"


def test_few_rows_a_class_prefer_contrastive_and_more_prefer_lora() -> None:
    assert preferred_method(plan("classification", 40, ["a", "b"])) == "contrastive"
    assert preferred_method(plan("classification", 400, ["a", "b"])) == "lora"
    assert preferred_method(plan("regression", 10, [])) == "lora"
