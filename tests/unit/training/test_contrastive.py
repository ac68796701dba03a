"""`method: "contrastive"` on the tiny base: SetFit's pair sampling, the run and its files, a
whole job through HTTP (trained, registered, served alone and in a mixed batch, loadable in
plain PEFT), cancels, divergence, and the tasks it refuses at submission."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel
from safetensors.torch import load
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.training import contrastive
from app.training.contrastive import (
    MAX_ITERATIONS,
    MAX_PAIRS,
    contrastive_adapter,
    pair_iterations,
    sample_pairs,
)
from app.training.encoding import encode_rows
from app.training.hyperparameters import Hyperparameters, fill_defaults
from app.training.loop import Ticker
from app.training.pooled import PooledHeadModel
from app.training.trainer import train
from app.training.types import CancelToken, TrainingCancelled, TrainingPlan
from tests.conftest import peft_adapter, upload
from tests.unit.peft_reference import as_vector
from tests.unit.registry.test_pooled_head import PooledModel
from tests.unit.training.test_trainer import Recorder, rows

LABELS = ["neg", "pos"]
RAW = {"top_k": None, "function_to_apply": "none"}


# ---------------------------------------------------------------- pairs
LABEL_LISTS = st.lists(st.integers(0, 5), min_size=2, max_size=60).filter(
    lambda ys: len(set(ys)) >= 2
)


@settings(max_examples=200, deadline=None)
@given(
    labels=LABEL_LISTS,
    iterations=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    cap=st.integers(1, 400),
)
def test_pairs_follow_setfit_and_the_cap(
    labels: list[int], iterations: int, seed: int, cap: int
) -> None:
    pairs = sample_pairs(labels, iterations=iterations, seed=seed, max_pairs=cap)
    assert pairs == sample_pairs(labels, iterations=iterations, seed=seed, max_pairs=cap)
    counts = Counter(labels)
    with_partner = sum(1 for y in labels if counts[y] > 1)
    uncapped = iterations * (with_partner + len(labels))  # one positive (if any), one negative
    assert len(pairs) == min(cap, uncapped)
    for row, other, target in pairs:
        assert 0 <= row < len(labels) and 0 <= other < len(labels)
        if target == 1.0:
            assert other != row and labels[other] == labels[row]
        else:
            assert target == 0.0 and labels[other] != labels[row]
    if cap >= uncapped:  # every row gets its pairs in every iteration
        firsts = Counter(row for row, _o, _t in pairs)
        assert all(firsts[r] == iterations * (1 + (counts[y] > 1)) for r, y in enumerate(labels))


def test_another_seed_draws_other_pairs() -> None:
    labels = [0, 1, 2] * 10
    assert sample_pairs(labels, iterations=2, seed=1) != sample_pairs(labels, iterations=2, seed=2)


@pytest.mark.parametrize("rows", [2, 16, 48, 150, 390, 1000, 100_000])
def test_iterations_follow_the_data_and_bound_the_pairs(rows: int) -> None:
    iterations = pair_iterations(rows)
    assert 1 <= iterations <= MAX_ITERATIONS
    if rows <= 48:
        assert iterations == MAX_ITERATIONS  # the full count for a few dozen rows
    if 2 * rows <= MAX_PAIRS:
        assert 2 * rows * iterations <= MAX_PAIRS
    if rows >= 390:
        assert iterations < MAX_ITERATIONS
    labels = [n % 7 for n in range(rows)]
    assert len(sample_pairs(labels, iterations=iterations, seed=0)) <= MAX_PAIRS


def test_the_head_strength_is_cross_validated_when_every_class_has_two_rows() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 6)
    x = rng.normal(size=(18, 8)) + 3 * np.eye(8)[y]
    tick = Ticker(CancelToken())
    (weight, _bias), c, folds = contrastive._fit_head(x, y, rows=3, tick=tick)
    assert folds == 5 and c in contrastive.C_GRID and weight.shape == (3, 8)
    # one class with a single row: nothing to fold, SetFit's strength
    _head, c, folds = contrastive._fit_head(x[:13], y[:13], rows=3, tick=tick)
    assert (c, folds) == (contrastive.DEFAULT_C, 0)
    # hundreds of rows: fewer folds, so the grid costs folds x rows, not more
    many = np.repeat(np.arange(3), 200)
    _head, _c, folds = contrastive._fit_head(
        rng.normal(size=(600, 8)) + 3 * np.eye(8)[many], many, rows=3, tick=tick
    )
    assert folds == contrastive.FOLD_ROWS // 600


# ---------------------------------------------------------------- one run
def plan_of(train_rows: int = 32, **hp: Any) -> TrainingPlan:
    return TrainingPlan(
        adapter="c",
        task="classification",
        method="contrastive",
        train_rows=rows(train_rows, 0),
        validation_rows=rows(8, 1),
        labels=LABELS,
        hyperparameters={"seed": 0, "log_every_steps": 5, **hp},
    )


def run(
    base: FrozenBase, plan: TrainingPlan, reporter: Recorder, cancel: CancelToken | None = None
) -> Any:
    hp = fill_defaults(
        Hyperparameters.model_validate(plan.hyperparameters),
        method="contrastive",
        rows=len(plan.train_rows),
        lengths=[8],
        max_tokens=64,
    )
    encode = lambda r: encode_rows(  # noqa: E731
        r, base.tokenizer, task=plan.task, labels=plan.labels, max_length=32
    )
    return contrastive_adapter(
        plan,
        base=base,
        hp=hp,
        train=encode(plan.train_rows),
        val=encode(plan.validation_rows),
        reporter=reporter,
        tick=Ticker(cancel or CancelToken()),
        targets=None,
    )


def test_a_run_stores_lora_and_head_with_a_pooled_read_out(tiny_base: FrozenBase) -> None:
    reporter = Recorder()
    outcome = run(tiny_base, plan_of(), reporter)
    config = json.loads(outcome.files[CONFIG_FILE])
    assert (config["peft_type"], config["switchyard_method"]) == ("LORA", "contrastive")
    assert (config["layers"], config["pooling"]) == ([-1], "mean")
    tensors = load(outcome.files[WEIGHTS_FILE])
    assert {k for k in tensors if "lora_" not in k} == {
        "base_model.model.classifier.weight",
        "base_model.model.classifier.bias",
    }
    assert tensors["base_model.model.classifier.weight"].shape == (2, 32)
    # 32 rows, 10 iterations of a positive and a negative, SetFit's 16 pairs a step
    assert outcome.best["pairs"] == 640 and outcome.best["step"] == 40
    assert reporter.steps == list(range(1, 41))
    assert [e["step"] for e in reporter.kinds("loss")] == [1, *range(5, 41, 5)]
    assert outcome.hyperparameters["epochs"] == 1 and outcome.hyperparameters["batch_size"] == 16
    assert outcome.hyperparameters["learning_rate"] == 1e-3
    logits, gold = outcome.validation_logits
    assert logits.shape == (8, 2) and gold.tolist() == [n % 2 for n in range(8)]
    accuracy = float((logits.argmax(-1) == gold).float().mean())
    assert outcome.metrics["accuracy"] == pytest.approx(accuracy)
    assert outcome.history == reporter.kinds("evaluation")


def test_epochs_and_batch_size_of_the_job_are_kept(tiny_base: FrozenBase) -> None:
    outcome = run(tiny_base, plan_of(16, epochs=2, batch_size=64, max_steps=7), Recorder())
    # 16 rows: 320 pairs, 5 batches of 64 an epoch, two epochs cut at max_steps
    assert outcome.best["step"] == 7 and outcome.hyperparameters["batch_size"] == 64


def test_a_nan_loss_is_training_diverged(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PooledHeadModel.embed

    def nan(self: PooledHeadModel, **batch: torch.Tensor) -> torch.Tensor:
        return real(self, **batch) * float("nan")

    monkeypatch.setattr(PooledHeadModel, "embed", nan)
    with pytest.raises(SwitchyardError) as caught:
        run(tiny_base, plan_of(learning_rate=0.5), Recorder())
    error = caught.value
    assert (error.code, error.param) == ("training_diverged", "hyperparameters.learning_rate")
    assert "step 1" in error.message and "0.5" in error.message


def test_a_cancel_lands_within_a_step(tiny_base: FrozenBase) -> None:
    cancel, reporter = CancelToken(), Recorder()

    class Cancelling(Recorder):
        def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
            super().progress(step=step, total_steps=total_steps, epoch=epoch)
            if step == 3:
                cancel.cancel()

    reporter = Cancelling()
    with pytest.raises(TrainingCancelled):
        run(tiny_base, plan_of(), reporter, cancel)
    assert reporter.steps == [1, 2, 3] and reporter.kinds("evaluation") == []


def test_a_cancel_lands_inside_the_head_fit(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancel = CancelToken()
    real = contrastive._features

    def features(*args: Any, **kwargs: Any) -> Any:
        cancel.cancel()  # the user cancels as the pairs are done
        return real(*args, **kwargs)

    monkeypatch.setattr(contrastive, "_features", features)
    with pytest.raises(TrainingCancelled):
        run(tiny_base, plan_of(16), Recorder(), cancel)


def test_the_trainer_runs_it_and_a_pause_can_cancel(tiny_base: FrozenBase) -> None:
    """Through the trainer (the job's path): a cancel from a yield inside a step ends the run
    before another step completes."""
    cancel, reporter, calls = CancelToken(), Recorder(), []
    at: list[int] = []

    def pause() -> None:
        calls.append(1)
        if len(calls) == 200:
            cancel.cancel()
            at.append(len(reporter.steps))

    with pytest.raises(TrainingCancelled):
        train(
            plan_of(),
            base=tiny_base,
            reporter=reporter,
            cancel=cancel,
            max_rank=64,
            max_tokens=64,
            pause=pause,
        )
    assert at and 0 < len(reporter.steps) <= at[0] + 1
    assert reporter.kinds("loss") and reporter.kinds("evaluation") == []


# ---------------------------------------------------------------- a job over HTTP
def wait(client: TestClient, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_train_register_and_serve_over_http(
    client: TestClient,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    body = {
        "adapter": "few",
        "method": "contrastive",
        "examples": rows(40, 0),
        "hyperparameters": {"seed": 0},
    }
    submitted = client.post("/v1/training-jobs", json=body)
    assert submitted.status_code in (200, 201, 202), submitted.text
    job = wait(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    adapter = client.get("/v1/adapters/few").json()
    assert adapter["method"] == "contrastive" and adapter["task"] == "classification"
    # served alone, it is what plain PEFT over a mean-pooling module computes from its files
    texts = ["good great today", "awful sad we went", "fine"]
    alone = client.post("/v1/adapters/few/predict", json={"inputs": texts, "parameters": RAW})
    served = torch.stack([as_vector(o, LABELS) for o in alone.json()["outputs"]])
    download = client.get("/v1/adapters/few/download")
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(tmp_path / "few")
    bert = BertModel.from_pretrained(tiny_bert_dir).eval()
    # The generic PeftModel over the custom module (PEFT's sequence-classification wrapper
    # would call a transformers classifier): the config as downloaded, its task type dropped.
    config = LoraConfig.from_pretrained(str(tmp_path / "few"))
    config.task_type = None
    module = PooledModel(bert, [-1], "mean", 2)
    plain = PeftModel.from_pretrained(module, tmp_path / "few", config=config).eval()
    with torch.inference_mode():
        expected = torch.cat([plain(**tokenizer([t], return_tensors="pt")) for t in texts])
    assert (served - expected).abs().max() < 1e-4
    # in one batch with a plain LoRA (pooler head), each adapter keeps its own answer
    other = peft_adapter(tiny_bert_dir, out=tmp_path / "plain")
    assert upload(client, "plain", other, labels=LABELS).status_code == 201
    solo = client.post("/v1/adapters/plain/predict", json={"inputs": texts, "parameters": RAW})
    mixed = client.post(
        "/v1/predict", json={"adapters": ["few", "plain"], "inputs": texts, "parameters": RAW}
    ).json()["results"]
    for name, reference in (("few", served), ("plain", solo.json()["outputs"])):
        got = torch.stack([as_vector(o, LABELS) for o in mixed[name]["outputs"]])
        want = (
            reference
            if isinstance(reference, torch.Tensor)
            else torch.stack([as_vector(o, LABELS) for o in reference])
        )
        assert (got - want).abs().max() < 1e-4, name


@pytest.mark.parametrize(
    ("task", "examples"),
    [
        ("regression", [{"text": f"row {n}", "label": float(n)} for n in range(12)]),
        (
            "multi_label_classification",
            [{"text": f"row {n}", "labels": ["a", "b"][: 1 + n % 2]} for n in range(12)],
        ),
        (
            "token_classification",
            [{"tokens": ["a", "b"], "tags": ["O", "B-X"]} for _ in range(12)],
        ),
    ],
)
def test_tasks_other_than_classification_are_a_400_at_submission(
    client: TestClient, task: str, examples: list[dict[str, Any]]
) -> None:
    body = {"adapter": "no", "method": "contrastive", "task": task, "examples": examples}
    response = client.post("/v1/training-jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_task", "task")
    assert task in error["message"] and "contrastive" in error["message"]
    assert client.get("/v1/training-jobs").json()["data"] == []
