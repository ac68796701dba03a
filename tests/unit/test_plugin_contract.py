"""The contract every task and method plug-in keeps, run for each pair the registries allow.

For every registered trainable task and every registered method that the task and the method
both accept on that kind of base, one tiny job goes through the real API: submitted, trained,
registered, then served, and the outputs must have the task's pipeline shape. A new task or
method is covered here without anyone writing a test for it; a new task only adds its sample
rows below (the first test fails until it does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.base import FrozenBase
from app.config import Settings
from app.methods import METHODS
from app.tasks import TRAINABLE
from tests.unit.tiny_decoder import serving_base, tiny_llama, tiny_tokenizer

WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad"]


def _sample(task: str, n: int) -> dict[str, Any]:
    """Row `n` of a tiny learnable set of `task`."""
    word, positive = WORDS[n % 8], n % 8 < 4
    label = "pos" if positive else "neg"
    rows: dict[str, dict[str, Any]] = {
        "classification": {"text": f"{word} film {n}", "label": label},
        "multi_label_classification": {"text": f"{word} film {n}", "labels": [label]},
        "regression": {"text": f"{word} film {n}", "label": 1.0 if positive else 0.0},
        "token_classification": {"tokens": [word, "film"], "tags": [label.upper(), "O"]},
        "generation": {"prompt": f"word: {word} ->", "completion": " fine"},
        "language_modeling": {"text": f"the {word} film {n} was {word} again"},
    }
    return rows[task]


def _pairs(kind: str) -> list[tuple[str, str]]:
    return [
        (task, method)
        for task, found in TRAINABLE.items()
        if kind in found.kinds
        for method, entry in METHODS.items()
        if kind in entry.traits.bases
        and (entry.traits.tasks is None or task in entry.traits.tasks)
        and method in _methods(found, kind)
    ]


def _methods(task: Any, kind: str) -> tuple[str, ...]:
    """The methods a task trains on this kind of base (a task may narrow them by kind)."""
    narrowed: dict[str, tuple[str, ...]] = getattr(task, "methods_on", {})
    return narrowed.get(kind, task.methods if task.methods is not None else tuple(METHODS))


def _check_shape(task: str, outputs: list[Any]) -> None:
    assert len(outputs) == 2
    for out in outputs:
        if task == "language_modeling" and isinstance(out, list):  # fill-mask (encoder)
            assert all({"token_str", "score", "token", "sequence"} <= set(o) for o in out)
        elif task in ("generation", "language_modeling"):  # a decoder's: generation
            assert isinstance(out, dict) and isinstance(out["generated_text"], str)
        elif task == "token_classification":
            assert isinstance(out, list) and all("entity" in e or "entity_group" in e for e in out)
        elif task == "regression":
            assert isinstance(out, dict | list)
        else:
            assert isinstance(out, list | dict)


def _train_and_serve(client: TestClient, task: str, method: str, *, kind: str) -> None:
    hyperparameters: dict[str, Any] = {
        "epochs": 1, "batch_size": 8, "seed": 0, "num_virtual_tokens": 2
    }  # fmt: skip
    if task == "language_modeling" and kind == "encoder":
        hyperparameters["keep_head"] = True  # so that it serves fill-mask
    body = {
        "adapter": "contract",
        "task": task,
        "method": method,
        "examples": [_sample(task, n) for n in range(24)],
        "hyperparameters": hyperparameters,
    }
    submitted = client.post("/v1/training-jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + 300
    job = submitted.json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/v1/training-jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job.get("error")
    inputs: list[Any] = ["good film", "bad film"]
    generates = task == "generation" or (task == "language_modeling" and kind == "decoder")
    if generates:
        inputs = ["word: good ->", "word: bad ->"]
    elif task == "language_modeling":
        inputs = ["a good [MASK]", "a [MASK] film"]
    params = {"max_new_tokens": 2} if generates else {}
    reply = client.post(
        "/v1/adapters/contract/predict", json={"inputs": inputs, "parameters": params}
    )
    assert reply.status_code == 200, reply.text
    _check_shape(task, reply.json()["outputs"])


def test_every_trainable_task_has_sample_rows_and_a_method() -> None:
    paired = {task for kind in ("encoder", "decoder") for task, _ in _pairs(kind)}
    for task in TRAINABLE:
        assert _sample(task, 0), task
        assert task in paired, f"no registered method trains {task}"


@pytest.fixture
def decoder_client(tmp_path: Path) -> Iterator[TestClient]:
    from app.main import create_app

    tok = tiny_tokenizer()
    base = serving_base(tiny_llama(tok), tok)
    settings = Settings(store=tmp_path / "store", max_wait_ms=1.0, _env_file=None)
    with TestClient(create_app(settings, base=base)) as test_client:
        yield test_client


@pytest.mark.parametrize(("task", "method"), _pairs("encoder"))
def test_encoder_pair_trains_registers_and_serves(
    task: str, method: str, client: TestClient, tiny_base: FrozenBase
) -> None:
    _train_and_serve(client, task, method, kind="encoder")


@pytest.mark.parametrize(("task", "method"), _pairs("decoder"))
def test_decoder_pair_trains_registers_and_serves(
    task: str, method: str, decoder_client: TestClient
) -> None:
    _train_and_serve(decoder_client, task, method, kind="decoder")
