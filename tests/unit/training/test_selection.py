"""Selection rules by the number of rows that judge a run (app/training/selection.py), the folds
that cross-validation deals (app/training/split.py), and both rules run end to end on the tiny
base: few rows never stop early on noise, and the cross-validation path trains its folds, picks
the schedule out of fold, and ships an adapter trained on every row."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.training import evaluation
from app.training.job_records import JobReporter
from app.training.selection import LARGE_VALIDATION, SMALL_VALIDATION, Rule, choose_rule
from app.training.split import fold_indices
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan
from tests.unit.training.test_trainer import Recorder, rows


def rule(
    validation_rows: int, *, source: str = "held_out", smallest: int = 10, asked: str = "auto"
) -> Rule:
    return choose_rule(
        rows=200,
        validation_rows=validation_rows,
        source=source,
        epochs=9,
        metric="accuracy",
        smallest_class=smallest,
        asked=asked,
    )


def test_a_handful_of_held_out_rows_means_cross_validation_on_all_rows() -> None:
    chosen = rule(SMALL_VALIDATION - 1)
    assert (chosen.name, chosen.folds, chosen.keep_last, chosen.early_stop) == (
        "cross_validation",
        2,
        True,
        False,
    )
    assert "2-fold cross-validation for the schedule" in chosen.message
    assert "trained on all rows" in chosen.message


def test_few_rows_of_the_users_own_validation_run_the_fixed_schedule() -> None:
    for source in ("validation_data", "training_rows"):
        chosen = rule(10, source=source)
        assert (chosen.name, chosen.keep_last, chosen.early_stop) == ("fixed", True, False)
    # A class of one row cannot be dealt into folds: the fixed schedule instead.
    assert rule(10, smallest=1).name == "fixed"


def test_middle_sizes_pick_by_the_metric_after_a_floor() -> None:
    chosen = rule(SMALL_VALIDATION)
    assert (chosen.name, chosen.criterion, chosen.early_stop) == (
        "validation_metric",
        "accuracy",
        True,
    )
    assert chosen.min_epochs == 3  # a third of the 9 planned epochs


def test_many_rows_pick_by_the_primary_metric() -> None:
    chosen = rule(LARGE_VALIDATION)
    assert (chosen.name, chosen.criterion, chosen.early_stop) == (
        "validation_metric",
        "accuracy",
        True,
    )


def test_a_rule_asked_for_wins_and_an_impossible_one_is_a_400() -> None:
    assert rule(5000, asked="fixed").name == "fixed"
    assert rule(5, asked="validation_metric").criterion == "accuracy"
    with pytest.raises(SwitchyardError) as caught:
        rule(5, asked="cross_validation", smallest=1)
    assert caught.value.param == "hyperparameters.selection"
    assert "smallest has 1" in caught.value.message


@given(
    st.lists(st.sampled_from("abcde"), min_size=2, max_size=80),
    st.integers(min_value=2, max_value=5),
    st.integers(min_value=0, max_value=2**16),
)
def test_folds_are_disjoint_cover_every_row_and_spread_each_class(
    labels: list[str], folds: int, seed: int
) -> None:
    data = [{"label": label} for label in labels]
    dealt = fold_indices(data, "classification", folds=folds, seed=seed)
    flat = [i for fold in dealt for i in fold]
    assert sorted(flat) == list(range(len(labels)))
    assert dealt == fold_indices(data, "classification", folds=folds, seed=seed)  # seeded
    for label, count in Counter(labels).items():
        per_fold = [sum(labels[i] == label for i in fold) for fold in dealt]
        assert max(per_fold) - min(per_fold) <= 1, (label, count, per_fold)


def plan(source: str, *, train_rows: int, validation_rows: int, **hp: Any) -> TrainingPlan:
    return TrainingPlan(
        adapter="a",
        task="classification",
        method="lora",
        train_rows=rows(train_rows, 0),
        validation_rows=rows(validation_rows, 1),
        labels=["neg", "pos"],
        hyperparameters={"batch_size": 8, "log_every_steps": 1, "seed": 0, **hp},
        validation_source=source,
    )


def run(base: FrozenBase, job: TrainingPlan, reporter: Recorder) -> TrainingOutcome:
    return train(
        job, base=base, reporter=reporter, cancel=CancelToken(), max_rank=64, max_tokens=64
    )


def test_few_validation_rows_never_stop_early_on_noise(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accuracies that fall after the first evaluation would stop a metric-judged run after two
    more; with 8 rows judging, the whole schedule runs and its last state ships."""
    scores = iter([0.9, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4])

    def noisy(*_args: Any, **_kw: Any) -> evaluation.Evaluation:
        return evaluation.Evaluation({"accuracy": next(scores)}, loss=1.0)

    monkeypatch.setattr(evaluation, "evaluate_run", noisy)
    reporter = Recorder()
    job = plan("validation_data", train_rows=32, validation_rows=8, epochs=6)
    outcome = run(tiny_base, job, reporter)
    assert max(reporter.steps) == 24  # 6 epochs of 4 steps: no early stop
    assert outcome.best["step"] == 24  # the last state, not the lucky first evaluation
    assert outcome.selection["rule"] == "fixed" and outcome.selection["stopped_early"] is False
    assert not any("early stop at" in e.get("message", "") for e in reporter.kinds("info"))


def test_the_cross_validation_path_runs_its_folds_and_trains_on_all_rows(
    tiny_base: FrozenBase,
) -> None:
    reporter = Recorder()
    job = plan("held_out", train_rows=28, validation_rows=8, epochs=3, head_init="probe")
    outcome = run(tiny_base, job, reporter)
    folds = {e.get("fold") for e in reporter.kinds("evaluation")}
    assert folds == {1, 2}
    assert outcome.selection["rule"] == "cross_validation"
    assert outcome.best["criterion"] == "2-fold cross-validation"
    chosen = outcome.selection["chosen_epochs"]
    assert 0 <= chosen <= 3 and outcome.hyperparameters["epochs"] == chosen
    # Out-of-fold logits: every one of the 36 rows judged once, by a model that never saw it.
    assert outcome.validation_logits is not None and len(outcome.validation_logits[1]) == 36
    assert [c["epoch"] for c in outcome.history] == [0, 1, 2, 3]
    messages = [e["message"] for e in reporter.kinds("info")]
    assert any("36 rows: 2-fold cross-validation for the schedule" in m for m in messages)
    assert any("training on all 36 rows" in m for m in messages)
    # The job's steps run on across folds and the final run: never back to 1.
    assert reporter.steps == sorted(reporter.steps)
    losses = [e["step"] for e in reporter.kinds("loss")]
    assert losses == sorted(losses) and len(set(losses)) == len(losses)


def test_an_early_stop_shows_in_the_final_progress() -> None:
    class Records:
        def set_progress(self, _job: str, _progress: dict[str, Any]) -> None:
            pass

    reporter = JobReporter(Records(), "job", 0.0)  # type: ignore[arg-type]
    reporter.progress(step=12, total_steps=40, epoch=3.0)
    stopped = reporter.final(stopped_early=True)
    assert (stopped["step"], stopped["total_steps"], stopped["stopped_early"]) == (12, 40, True)
    assert stopped["percent"] == 100.0
    finished = reporter.final()
    assert (finished["step"], finished["total_steps"], finished["stopped_early"]) == (12, 12, False)


def test_middle_sizes_stop_only_after_the_floor(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 validation rows: accuracy picks the checkpoint, and patience may end the run only
    once a third of the 9 epochs has run."""
    scores = iter([0.9, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])

    def scripted(*_args: Any, **_kw: Any) -> evaluation.Evaluation:
        return evaluation.Evaluation({"accuracy": next(scores)}, loss=1.0)

    monkeypatch.setattr(evaluation, "evaluate_run", scripted)
    reporter = Recorder()
    job = plan("validation_data", train_rows=32, validation_rows=60, epochs=9)
    job.hyperparameters.update(early_stopping_patience=1, head_init="random")
    outcome = run(tiny_base, job, reporter)
    assert outcome.selection["rule"] == "validation_metric"
    assert [e["step"] for e in outcome.history] == [4, 8, 12]  # not stopped at 8: the floor
    assert outcome.selection["stopped_early"] is True
    assert outcome.selection["steps"] == 12 and outcome.selection["planned_steps"] == 36
    assert outcome.best["step"] == 4 and outcome.best["value"] == 0.9
    assert any("early stop at step 12 of 36" in e["message"] for e in reporter.kinds("info"))


def test_validation_loss_is_a_rule_a_job_may_ask_for(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    losses = iter([0.5, 0.9, 1.0, 1.1, 1.2, 1.3])

    def scripted(*_args: Any, **_kw: Any) -> evaluation.Evaluation:
        return evaluation.Evaluation({"accuracy": 0.5}, loss=next(losses))

    monkeypatch.setattr(evaluation, "evaluate_run", scripted)
    job = plan("validation_data", train_rows=32, validation_rows=60, epochs=6)
    job.hyperparameters.update(
        early_stopping_patience=2, head_init="random", selection="validation_loss"
    )
    outcome = run(tiny_base, job, Recorder())
    assert outcome.selection["rule"] == "validation_loss"
    assert outcome.best["step"] == 4 and outcome.best["criterion"] == "validation loss"
    assert [e["step"] for e in outcome.history] == [4, 8, 12]
