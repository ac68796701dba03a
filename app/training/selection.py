"""How a run picks its schedule and its checkpoint: by how many rows can judge it.

A validation split of a handful of rows cannot tell two checkpoints apart: with 6 rows every
accuracy is 0, 1/6, 2/6, ..., and "the best" is whichever got lucky. Early stopping on such
rows ended planned 20-epoch runs after 2 epochs, and the checkpoint picked was often the
untrained start. So the rule depends on the size of what judges the run:

- fewer than `SMALL_VALIDATION` held-out rows of our own split: k-fold cross-validation of the
  whole recipe chooses the number of epochs (the mean out-of-fold loss over all rows, not a
  handful), and the final adapter is trained on all rows with that schedule;
- fewer than `SMALL_VALIDATION` rows the user gave (or none to spare): the fixed schedule,
  no early stop, the last state ships (nothing can judge it better);
- more: the task's primary metric picks it, with the job's patience, which counts only after
  a third of the schedule below `LARGE_VALIDATION` rows (a noisy dip early on ended runs that
  were still improving). Validation loss, smoother, ranked checkpoints worse than the metric
  it stands for (SST-2 800 rows: 0.745 against 0.75+; the loss prefers early, less confident
  checkpoints): it is a rule a job may ask for, not a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from app.errors import bad_request
from app.training.evaluation import primary_metric
from app.training.rows import label_counts
from app.training.types import TrainingPlan

if TYPE_CHECKING:
    from app.training.hyperparameters import Hyperparameters

SMALL_VALIDATION = 50
LARGE_VALIDATION = 500
# Each fold is a whole training run on (k-1)/k of the rows: two folds cost about one full run
# (then the final run), three cost two. On a CPU that decides whether a 100-row job with `auto`
# takes minutes or a quarter of an hour; every row is still judged once, out of fold.
MAX_FOLDS = 2
MIN_FOLDS = 2
RuleName = Literal["cross_validation", "fixed", "validation_loss", "validation_metric"]


@dataclass(frozen=True)
class Rule:
    """The selection rule of one run, and why it was chosen."""

    name: RuleName
    folds: int = 0  # cross_validation only
    criterion: str = "loss"  # "loss" (lower is better) or a metric name (higher is better)
    early_stop: bool = False
    min_epochs: int = 0  # patience counts only once this many epochs have run
    keep_last: bool = False  # the last state ships: no checkpoint is picked
    message: str = ""

    def as_json(self) -> dict[str, object]:
        """What the job shows under `selection`."""
        return {
            "rule": self.name,
            "folds": self.folds or None,
            "criterion": None if self.keep_last else self.criterion,
            "early_stopping": self.early_stop,
        }


def choose_rule(
    *,
    rows: int,
    validation_rows: int,
    source: str,
    epochs: int,
    metric: str,
    smallest_class: int,
    asked: str = "auto",
) -> Rule:
    """The rule for a run with `rows` training and `validation_rows` validation rows.

    `source` is where validation came from ("held_out": our split, which cross-validation may
    redraw; "validation_data": the user's; "training_rows": nothing to spare), `smallest_class`
    the fewest rows of one class (or `rows` for tasks without classes): folds need one each.
    """
    if asked != "auto":
        return _asked(
            cast(RuleName, asked),
            rows=rows,
            validation_rows=validation_rows,
            metric=metric,
            folds=min(MAX_FOLDS, smallest_class, rows + validation_rows),
        )
    if validation_rows < SMALL_VALIDATION:
        folds = min(MAX_FOLDS, smallest_class, rows + validation_rows)
        return _few(rows + validation_rows, validation_rows, source, epochs, metric, folds)
    if validation_rows < LARGE_VALIDATION:
        floor = max(2, -(-epochs // 3))
        return Rule(
            "validation_metric",
            criterion=metric,
            early_stop=True,
            min_epochs=floor,
            message=f"{validation_rows} validation rows: {metric} picks the checkpoint; "
            f"early stopping counts only after {floor} epochs",
        )
    return Rule(
        "validation_metric",
        criterion=metric,
        early_stop=True,
        min_epochs=1,
        message=f"{validation_rows} validation rows: {metric} picks the checkpoint",
    )


def _few(
    total: int, validation_rows: int, source: str, epochs: int, metric: str, folds: int
) -> Rule:
    """Too few rows judge: cross-validation where the split was ours, else the fixed schedule."""
    if source == "held_out" and folds >= MIN_FOLDS:
        return Rule(
            "cross_validation",
            folds=folds,
            criterion=metric,
            keep_last=True,
            message=f"{total} rows: {folds}-fold cross-validation for the schedule; "
            "the final adapter is trained on all rows",
        )
    return Rule(
        "fixed",
        keep_last=True,
        message=f"{validation_rows} validation rows are too few to pick a checkpoint: "
        f"the full schedule of {epochs} epochs runs without early stopping",
    )


def _asked(name: RuleName, *, rows: int, validation_rows: int, metric: str, folds: int) -> Rule:
    """The rule a job named in `hyperparameters.selection`."""
    said = f"selection {name!r} as asked"
    if name == "cross_validation":
        if folds < MIN_FOLDS:
            raise bad_request(
                "invalid_hyperparameter",
                f"cross_validation needs {MIN_FOLDS} rows of every class; the smallest has {folds}",
                param="hyperparameters.selection",
            )
        return Rule(name, folds=folds, criterion=metric, keep_last=True, message=said)
    if name == "fixed":
        return Rule(name, keep_last=True, message=said)
    if name == "validation_loss":
        return Rule(name, criterion="loss", early_stop=True, message=said)
    return Rule("validation_metric", criterion=metric, early_stop=True, message=said)


def rule_for(plan: TrainingPlan, hp: Hyperparameters) -> Rule:
    """The selection rule for this plan's rows (app.training.selection)."""
    counts = label_counts(plan.train_rows + plan.validation_rows, plan.task)
    return choose_rule(
        rows=len(plan.train_rows),
        validation_rows=len(plan.validation_rows),
        source=plan.validation_source,
        epochs=hp.epochs or 1,
        metric=primary_metric(plan.task),
        smallest_class=min(counts.values()) if counts else len(plan.train_rows),
        asked=hp.selection,
    )
