"""The real trainer on the tiny base: the best evaluation is what gets saved, early stopping,
cancel wherever the run is (probe, step, evaluation, solver), actionable failures, defaults."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load
from torch import nn

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.tasks import objectives
from app.training import evaluation, heads
from app.training.encoding import encode_rows
from app.training.hyperparameters import Hyperparameters, fill_defaults
from app.training.loop import Ticker, TrainLoop
from app.training.trainer import train
from app.training.types import CancelToken, TrainingCancelled, TrainingOutcome, TrainingPlan

GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
FILLER = ["we", "went", "to", "see", "it", "today"]


def rows(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        pool, label = (GOOD, "pos") if n % 2 else (BAD, "neg")
        out.append({"text": " ".join(rng.sample(pool, 2) + rng.sample(FILLER, 2)), "label": label})
    return out


def make_plan(method: str = "lora", **hp: Any) -> TrainingPlan:
    """32 rows, batch 8: four steps an epoch, an evaluation after each. The checkpoint is
    picked by validation accuracy (the rule for large validation sets), whatever the size."""
    return TrainingPlan(
        adapter="a",
        task="classification",
        method=method,
        train_rows=rows(32, 0),
        validation_rows=rows(8, 1),
        labels=["neg", "pos"],
        hyperparameters={
            "batch_size": 8,
            "log_every_steps": 1,
            "seed": 0,
            "head_init": "random",
            "selection": "validation_metric",
            **hp,
        },
    )


class Recorder:
    """A reporter that keeps everything."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        self.steps.append(step)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]


def run(
    base: FrozenBase,
    plan: TrainingPlan,
    reporter: Recorder | None = None,
    cancel: CancelToken | None = None,
    pause: Any = None,
) -> TrainingOutcome:
    return train(
        plan,
        base=base,
        reporter=reporter or Recorder(),
        cancel=cancel or CancelToken(),
        max_rank=64,
        max_tokens=64,
        pause=pause,
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Evaluations return scripted accuracies; the trainable state at each one is kept."""
    snapshots: list[dict[str, torch.Tensor]] = []

    def install(values: list[float]) -> list[dict[str, torch.Tensor]]:
        scores = iter(values)

        def fake(model: nn.Module, _examples: Any, **_kw: Any) -> evaluation.Evaluation:
            snapshots.append(
                {
                    n.replace(".default", "").removeprefix("peft."): p.detach().clone()
                    for n, p in model.named_parameters()
                    if "lora_" in n
                }
            )
            return evaluation.Evaluation({"accuracy": next(scores)}, loss=0.0)

        monkeypatch.setattr(evaluation, "evaluate_run", fake)
        return snapshots

    return install


def saved_lora(outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load(outcome.files[WEIGHTS_FILE]).items() if "lora_" in k}


def test_the_saved_adapter_is_the_best_evaluation_not_the_last(
    tiny_base: FrozenBase, scripted: Any
) -> None:
    snapshots = scripted([0.6, 0.9, 0.7, 0.8])
    reporter = Recorder()
    outcome = run(tiny_base, make_plan(epochs=4, early_stopping_patience=None), reporter)
    assert [e["step"] for e in outcome.history] == [4, 8, 12, 16]
    assert outcome.best == {"step": 8, "epoch": 2.0, "metric": "accuracy", "value": 0.9}
    assert outcome.metrics == {"accuracy": 0.9}
    saved = saved_lora(outcome)
    assert saved and set(saved) == set(snapshots[1])
    assert all(torch.equal(saved[k], snapshots[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], snapshots[3][k]) for k in saved)  # not the last


def test_early_stopping_after_patience_evaluations(tiny_base: FrozenBase, scripted: Any) -> None:
    scripted([0.9, 0.5, 0.5, 0.99])
    reporter = Recorder()
    outcome = run(tiny_base, make_plan(epochs=10, early_stopping_patience=2), reporter)
    assert [e["step"] for e in outcome.history] == [4, 8, 12]
    assert max(reporter.steps) == 12  # of 40
    assert outcome.best["step"] == 4
    assert any("early stop at step 12" in e["message"] for e in reporter.kinds("info"))


def test_eval_every_steps_is_honoured(tiny_base: FrozenBase, scripted: Any) -> None:
    scripted([0.5] * 10)
    outcome = run(tiny_base, make_plan(epochs=2, eval_every_steps=3, early_stopping_patience=None))
    assert [e["step"] for e in outcome.history] == [3, 6, 8]  # and the last step


def test_the_lp_ft_probe_is_a_candidate_too(tiny_base: FrozenBase, scripted: Any) -> None:
    """Fine-tuning that never beats the probe head ships the probe head (LoRA B still zero)."""
    scripted([0.9, 0.5, 0.4])
    outcome = run(tiny_base, make_plan(epochs=2, head_init="probe"))
    assert [e["step"] for e in outcome.history] == [0, 4, 8]
    assert outcome.best["step"] == 0
    saved = saved_lora(outcome)
    assert all(not v.any() for k, v in saved.items() if "lora_B" in k)


def test_cancel_lands_inside_the_probe_fit(tiny_base: FrozenBase) -> None:
    cancel, reporter = CancelToken(), Recorder()
    calls = []

    def pause() -> None:  # the first yield comes from the LP-FT feature pass
        calls.append(1)
        cancel.cancel()

    with pytest.raises(TrainingCancelled):
        run(tiny_base, make_plan(head_init="probe"), reporter, cancel, pause)
    assert len(calls) == 1 and reporter.kinds("loss") == [] and reporter.kinds("evaluation") == []


def test_cancel_lands_inside_an_evaluation(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancel, reporter = CancelToken(), Recorder()
    original = evaluation.predict_logits

    def cancelling(*args: Any, **kwargs: Any) -> Any:
        cancel.cancel()  # the user cancels just as the evaluation starts
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "predict_logits", cancelling)
    with pytest.raises(TrainingCancelled):
        run(tiny_base, make_plan(epochs=3), reporter, cancel)
    assert max(reporter.steps) == 4 and reporter.kinds("evaluation") == []


def test_cancel_lands_between_solver_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectives, "_LBFGS_CHUNK", 2)  # a fit of more than two iterations
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)), rng.integers(0, 3, size=200)
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) > 1:
            raise TrainingCancelled("cancelled")

    with pytest.raises(TrainingCancelled):
        heads.fit_head(x, y, task="classification", rows=3, tick=tick)
    assert len(ticks) == 2


def test_standardised_fit_reads_raw_features() -> None:
    """The scaling is folded into the head: raw features in, the fitted logits out."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)) * [1.0, 100.0, 0.01, 5.0] + [0.0, 50.0, 3.0, -2.0]
    y = (x[:, 1] > 50).astype(int)
    weight, bias = heads.fit_head(x, y, task="classification", rows=2)
    assert np.mean((x @ weight.T + bias).argmax(axis=1) == y) > 0.95


class NanModel(nn.Module):
    """A model whose loss is NaN: what a far too high learning rate ends in."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, **_batch: torch.Tensor) -> Any:
        return SimpleNamespace(loss=self.weight.sum() * float("nan"))


def test_a_diverged_loss_names_the_learning_rate(tiny_base: FrozenBase) -> None:
    plan = make_plan()
    examples = encode_rows(
        plan.train_rows, tiny_base.tokenizer, task=plan.task, labels=plan.labels, max_length=16
    )
    hp = fill_defaults(
        Hyperparameters(learning_rate=0.5, epochs=1),
        method="lora",
        rows=32,
        lengths=[8],
        max_tokens=64,
    )
    loop = TrainLoop(plan, tiny_base, NanModel(), hp, Recorder(), Ticker(CancelToken()))
    with pytest.raises(SwitchyardError) as caught:
        loop.run(examples, examples, evaluate_start=False)
    error = caught.value
    assert (error.code, error.param) == ("training_diverged", "hyperparameters.learning_rate")
    assert "step 1" in error.message and "0.5" in error.message


def test_linear_probe_picks_layers_and_strength_on_validation(tiny_base: FrozenBase) -> None:
    outcome = run(tiny_base, make_plan("linear_probe"))
    tried = {tuple(e["layers"]) for e in outcome.history}
    assert tried == {(-1,), (-1, -2, -3)}  # the tiny base has two layers and the embeddings
    assert len(outcome.history) == 12
    chosen = outcome.hyperparameters["layers"]
    assert tuple(chosen) in tried and outcome.best["layers"] == chosen
    assert json.loads(outcome.files[CONFIG_FILE])["layers"] == chosen
    head = load(outcome.files[WEIGHTS_FILE])["base_model.model.classifier.weight"]
    assert head.shape == (2, 32 * len(chosen))


@pytest.mark.parametrize(
    ("method", "rows", "given", "expected"),
    [
        ("lora", 100, {}, {"batch_size": 8, "epochs": 20, "eval_every_steps": None}),
        (
            "lora",
            800,
            {},
            {
                "batch_size": 16,
                "epochs": 6,
                "learning_rate": 1e-3,
                "head_learning_rate": 3e-3,
                "dropout": 0.05,
            },
        ),
        (
            "lora",
            5000,
            {},
            {"batch_size": 32, "epochs": 3, "early_stopping_patience": 2, "dropout": 0.0},
        ),
        ("lora", 40000, {}, {"epochs": 2, "eval_every_steps": 250, "early_stopping_patience": 10}),
        ("prefix", 800, {}, {"epochs": 12, "learning_rate": 1e-2}),
        (
            "lora",
            800,
            {"batch_size": 64, "epochs": 1, "early_stopping_patience": None},
            {"batch_size": 64, "epochs": 1, "early_stopping_patience": None},
        ),
    ],
)
def test_defaults_follow_the_data(
    method: str, rows: int, given: dict[str, Any], expected: dict[str, Any]
) -> None:
    hp = fill_defaults(
        Hyperparameters.model_validate(given),
        method=method,
        rows=rows,
        lengths=[10] * 98 + [40, 300],
        max_tokens=128,
    )
    assert {k: getattr(hp, k) for k in expected} == expected
    assert hp.max_length == 40  # the 98th percentile of the lengths


def test_cancel_a_real_job_over_http_within_seconds(client: Any) -> None:
    """The whole app on the tiny base: a LoRA job runs, is cancelled mid-run within a few
    seconds, its event stream ends with the cancel, and no adapter is registered."""
    import time

    # No early stopping: the tiny model fits these rows at once, and patience would end the
    # job (succeeded, so 409 on cancel) before the cancel arrives on a slow box.
    body = {
        "adapter": "never",
        "method": "lora",
        "examples": rows(64, 0),
        "hyperparameters": {"epochs": 100, "batch_size": 4, "early_stopping_patience": None},
    }
    job = client.post("/v1/training-jobs", json=body).json()
    deadline = time.monotonic() + 60
    while (client.get(f"/v1/training-jobs/{job['id']}").json()["progress"]["step"] or 0) < 2:
        assert time.monotonic() < deadline, "the job never started stepping"
        time.sleep(0.05)
    started = time.monotonic()
    response = client.post(f"/v1/training-jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and time.monotonic() - started < 5
    assert cancelled["result"] is None and cancelled["error"] is None
    with client.stream("GET", f"/v1/training-jobs/{job['id']}/events?stream=true") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines]
    assert events[-1]["kind"] == "status" and events[-1]["data"] == {"status": "cancelled"}
    assert any(e["kind"] == "loss" for e in events)
    assert client.get("/v1/adapters/never").status_code == 404


def _grad(param: torch.Tensor) -> torch.Tensor:
    """The gradient after a backward pass (read anew: mypy would keep a `grad = None` narrowing)."""
    assert param.grad is not None
    return param.grad


def test_micro_batches_add_up_to_the_batch() -> None:
    """A batch over the token budget is cut into row slices trimmed to their longest row; the
    weighted micro-batch gradients equal the whole batch's gradient."""
    from app.training.stepping import label_weight, micro_batches

    torch.manual_seed(0)
    lengths = [2, 3, 8, 8, 4, 1]
    ids = torch.zeros((6, 8), dtype=torch.long)
    mask = torch.zeros((6, 8), dtype=torch.long)
    for n, length in enumerate(lengths):
        ids[n, :length] = torch.randint(1, 50, (length,))
        mask[n, :length] = 1
    tags = torch.where(mask == 1, torch.randint(0, 3, (6, 8)), torch.full((6, 8), -100))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": tags}
    parts = micro_batches(batch, budget=16)
    assert [p["input_ids"].shape for p in parts] == [(2, 3), (2, 8), (2, 4)]
    assert sum(label_weight(p) for p in parts) == label_weight(batch) == sum(lengths)
    assert micro_batches(batch, budget=None) == [batch]

    embed, head = nn.Embedding(50, 4), nn.Linear(4, 3)

    def loss_of(part: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = head(embed(part["input_ids"]))
        return nn.functional.cross_entropy(logits.flatten(0, 1), part["labels"].flatten())

    loss_of(batch).backward()
    whole = _grad(head.weight).clone()
    head.weight.grad = None
    for part in parts:
        (loss_of(part) * label_weight(part) / label_weight(batch)).backward()
    assert torch.allclose(_grad(head.weight), whole, atol=1e-6)
