"""Temperature scaling (app/training/calibration.py): the fit, the ECE it reports, the head it
rescales in the stored files, and a trained job whose served scores are the calibrated ones."""

from __future__ import annotations

import json
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.training.calibration import (
    T_BOUNDS,
    calibrate,
    expected_calibration_error,
    fit_temperature,
)
from app.training.types import TrainingOutcome

HEAD_W, HEAD_B = "base_model.model.classifier.weight", "base_model.model.classifier.bias"


def sampled(rows: int, *, scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true class distribution, times `scale` (over-confident when
    above 1), and gold labels drawn from that distribution."""
    generator = torch.Generator().manual_seed(seed)
    true = torch.randn(rows, 3, generator=generator) * 1.5
    gold = torch.multinomial(true.softmax(-1), 1, generator=generator).squeeze(-1)
    return true * scale, gold


def outcome(logits: torch.Tensor, gold: torch.Tensor) -> TrainingOutcome:
    tensors = {HEAD_W: torch.ones(3, 4), HEAD_B: torch.zeros(3), "x.lora_A.weight": torch.ones(1)}
    return TrainingOutcome(
        files={
            CONFIG_FILE: json.dumps({"peft_type": "LORA"}).encode(),
            WEIGHTS_FILE: save(tensors),
        },
        metrics={"accuracy": 0.5},
        history=[],
        best={"step": 3},
        hyperparameters={},
        validation_logits=(logits, gold),
    )


def test_the_fitted_temperature_undoes_over_confidence() -> None:
    logits, gold = sampled(4000, scale=3.0)
    temperature = fit_temperature(logits, gold, task="classification")
    assert 2.4 < temperature < 3.6
    before = expected_calibration_error(logits.softmax(-1), gold)
    after = expected_calibration_error((logits / temperature).softmax(-1), gold)
    assert after < before / 2


def test_calibrate_folds_the_temperature_into_the_head_and_reports_ece() -> None:
    logits, gold = sampled(400, scale=4.0, seed=1)
    done = calibrate(outcome(logits, gold), task="classification")
    temperature = done.best["temperature"]
    tensors = load(done.files[WEIGHTS_FILE])
    assert torch.allclose(tensors[HEAD_W], torch.ones(3, 4) / temperature, rtol=1e-4)
    assert torch.equal(tensors["x.lora_A.weight"], torch.ones(1))  # the body is untouched
    config = json.loads(done.files[CONFIG_FILE])
    assert math.isclose(config["switchyard_temperature"], temperature, rel_tol=1e-3)
    assert done.metrics["ece"] < done.metrics["ece_uncalibrated"]
    assert done.metrics["accuracy"] == 0.5  # argmax unchanged: accuracy is kept as measured


def test_too_few_rows_or_no_classes_leave_the_outcome_alone() -> None:
    logits, gold = sampled(10, scale=4.0)
    few = outcome(logits, gold)
    assert calibrate(few, task="classification").files == few.files
    regression = outcome(*sampled(400, scale=4.0))
    assert "ece" not in calibrate(regression, task="regression").metrics


def test_multi_label_logits_get_one_temperature() -> None:
    generator = torch.Generator().manual_seed(2)
    true = torch.randn(500, 4, generator=generator)
    gold = torch.bernoulli(torch.sigmoid(true), generator=generator)
    temperature = fit_temperature(true * 5, gold, task="multi_label_classification")
    assert 3.5 < temperature < 6.5


@settings(max_examples=20, deadline=None)
@given(
    st.integers(min_value=1, max_value=60),
    st.floats(min_value=0.01, max_value=50.0),
    st.integers(min_value=0, max_value=2**16),
)
def test_any_logits_give_a_bounded_temperature_and_ece(rows: int, scale: float, seed: int) -> None:
    logits, gold = sampled(rows, scale=scale, seed=seed)
    temperature = fit_temperature(logits, gold, task="classification")
    assert T_BOUNDS[0] <= temperature <= T_BOUNDS[1]
    ece = expected_calibration_error((logits / temperature).softmax(-1), gold)
    assert 0.0 <= ece <= 1.0
