"""Calibrated scores: a temperature fitted on held-out logits, folded into the stored head.

A fine-tuned head is usually over-confident, and a probe fitted with strong regularisation
under-confident; either way `score` would not be the probability it claims, and routing or
threshold decisions on it go wrong. Temperature scaling (Guo et al., 2017) divides the logits by
one number fitted to minimise the negative log-likelihood of rows the head did not train on
(the validation rows, or the out-of-fold rows of cross-validation): it changes no argmax, so
accuracy stays, and multi-label thresholds at 0.5 then mean "more likely than not".

The temperature is folded into the head's weight and bias, so every reader of the files (the
service, plain PEFT) gets calibrated logits with no new code; the config records it as
`switchyard_temperature`.
"""

from __future__ import annotations

import itertools
import json
import math
import re

import torch
from safetensors.torch import load, save

from app.tasks import HEAD_TASKS
from app.tasks.base import Calibration
from app.training.types import TrainingOutcome

MIN_ROWS = 20  # fewer held-out rows fit a temperature to noise
T_BOUNDS = (0.05, 20.0)
_HEAD_KEY = re.compile(r"(^|.*\.)(classifier|score)\.(weight|bias)")
_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def expected_calibration_error(probs: torch.Tensor, gold: torch.Tensor, *, bins: int = 10) -> float:
    """ECE of the top label: the mean |accuracy - confidence| over equal-width confidence bins,
    weighted by how many rows fall in each."""
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == gold).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].mean()).abs()
            total += float(gap) * int(inside.sum()) / len(gold)
    return total


def fit_temperature(logits: torch.Tensor, gold: torch.Tensor, *, task: str) -> float:
    """The temperature minimising held-out NLL, by a bounded search over log T."""
    calibration = _calibration(task)
    if calibration is None:
        raise ValueError(f"task {task!r} has no probabilities to calibrate")
    logits, lo, hi = logits.double(), math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    for _ in range(60):  # golden-section search: the NLL is unimodal in log T
        a, b = hi - (hi - lo) / 1.618, lo + (hi - lo) / 1.618
        if _nll(logits, gold, math.exp(a), calibration) < _nll(
            logits, gold, math.exp(b), calibration
        ):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def calibrate(outcome: TrainingOutcome, *, task: str) -> TrainingOutcome:
    """Fit a temperature on the outcome's held-out logits, fold it into its head, and add
    `ece` (after) and `ece_uncalibrated` to its metrics. Outcomes without enough held-out
    logits, or of tasks without class probabilities, come back unchanged."""
    pair = outcome.validation_logits
    calibration = _calibration(task)
    if calibration is None or pair is None or len(pair[1]) < MIN_ROWS:
        return outcome
    logits, gold = pair[0].float(), pair[1]
    temperature = fit_temperature(logits, gold, task=task)
    before = _ece(logits, gold, calibration)
    after = _ece(logits / temperature, gold, calibration)
    outcome.files = _fold(outcome.files, temperature)
    outcome.metrics = {**outcome.metrics, "ece": after, "ece_uncalibrated": before}
    outcome.best = {**outcome.best, "temperature": round(temperature, 4)}
    return outcome


def _calibration(task: str) -> Calibration | None:
    """The task's calibration; None for tasks whose outputs are not probabilities."""
    found = HEAD_TASKS.get(task)  # generation has no head to fold a temperature into
    return found.calibration if found is not None else None


def _nll(
    logits: torch.Tensor, gold: torch.Tensor, temperature: float, calibration: Calibration
) -> float:
    return float(calibration.loss(logits / temperature, gold, reduction="mean"))


def _ece(logits: torch.Tensor, gold: torch.Tensor, calibration: Calibration) -> float:
    probs, truth = calibration.confidences(logits, gold)
    return round(expected_calibration_error(probs, truth), 4)


def _fold(files: dict[str, bytes], temperature: float) -> dict[str, bytes]:
    tensors = load(files[_WEIGHTS])
    heads = [key for key in tensors if _HEAD_KEY.fullmatch(key)]
    if not heads:
        return files
    for key in heads:
        tensors[key] = (tensors[key].float() / temperature).to(tensors[key].dtype).contiguous()
    config = json.loads(files[_CONFIG])
    config["switchyard_temperature"] = round(temperature, 6)
    return {**files, _WEIGHTS: save(tensors), _CONFIG: json.dumps(config, indent=2).encode()}
