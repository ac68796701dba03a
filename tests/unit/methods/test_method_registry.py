"""The contract every registered method keeps, so a new plug-in is covered without a test of
its own: the registry is consistent, and each method trains on the tiny base through the real
trainer, registers over HTTP under the name the catalog shows for it, and serves."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.base import FrozenBase
from app.methods import METHODS, PEFT_TYPES, method_of_files
from app.tasks import CLASSIFICATION
from app.training.trainer import train
from app.training.types import CancelToken, TrainingPlan
from tests.conftest import upload
from tests.unit.reporters import RecordingReporter

GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
# Training-only methods and selectors store another method's files.
NO_FILES = [name for name, m in METHODS.items() if m.files is None]


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {"text": f"{(GOOD if n % 2 else BAD)[n % 4]} film {n}", "label": "pos" if n % 2 else "neg"}
        for n in range(count)
    ]


def test_every_name_is_its_entry_and_every_file_format_is_read() -> None:
    assert all(m.name == name for name, m in METHODS.items())
    for peft_type, name in PEFT_TYPES.items():
        assert method_of_files({"peft_type": peft_type}) is METHODS[name]
    assert method_of_files({"peft_type": "LOHA"}) is None


@pytest.mark.parametrize("name", NO_FILES)
def test_a_method_without_files_is_stored_as_one_with_them_or_selects(name: str) -> None:
    method = METHODS[name]
    stored = method.traits.stored_as
    assert stored is None or METHODS[stored].files is not None
    assert method.trainer is None and method.causal is None


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_registers_and_serves(
    name: str, client: TestClient, tiny_base: FrozenBase
) -> None:
    plan = TrainingPlan(
        adapter="c", task=CLASSIFICATION, method=name,
        train_rows=rows(16), validation_rows=rows(6), labels=["neg", "pos"],
        hyperparameters={
            "epochs": 1, "batch_size": 8, "seed": 0, "num_virtual_tokens": 2,
            "early_stopping_patience": None,
        },
    )  # fmt: skip
    outcome = train(
        plan,
        base=tiny_base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=64,
    )
    made = upload(client, "c", outcome.files, labels=["neg", "pos"])
    assert made.status_code in (200, 201), made.text
    shown = made.json()["method"]
    if METHODS[name].files is not None or METHODS[name].traits.stored_as is not None:
        assert shown == name
    else:  # a selector stores its winner's files
        assert shown != name and shown in METHODS
    body = {"inputs": ["good film", "bad film"], "parameters": {"top_k": None}}
    reply = client.post("/v1/adapters/c/predict", json=body)
    assert reply.status_code == 200, reply.text
    assert all({s["label"] for s in row} <= {"neg", "pos"} for row in reply.json()["outputs"])
