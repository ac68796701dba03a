"""The loop ranks evaluations by their criterion's score, whatever value the job shows: under
`validation_loss` the best checkpoint is the lowest loss, shown with the task's metric."""

from __future__ import annotations

from typing import Any

import pytest

from app.base import FrozenBase
from app.training import evaluation
from tests.unit.training.test_selection import plan, run
from tests.unit.training.test_trainer import Recorder


def test_validation_loss_picks_the_lowest_loss_not_the_first(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shown value is the accuracy; comparing the next loss with it would keep the first
    evaluation for ever."""
    losses = iter([0.9, 0.5, 0.7, 0.8, 0.9, 1.0])

    def scripted(*_args: Any, **_kw: Any) -> evaluation.Evaluation:
        return evaluation.Evaluation({"accuracy": 0.5}, loss=next(losses))

    monkeypatch.setattr(evaluation, "evaluate_run", scripted)
    job = plan("validation_data", train_rows=32, validation_rows=60, epochs=6)
    job.hyperparameters.update(
        early_stopping_patience=2, head_init="random", selection="validation_loss"
    )
    outcome = run(tiny_base, job, Recorder())
    assert outcome.best["step"] == 8 and outcome.best["criterion"] == "validation loss"
    assert (outcome.best["metric"], outcome.best["value"]) == ("accuracy", 0.5)
    assert [e["step"] for e in outcome.history] == [4, 8, 12, 16]  # two worse: stopped
