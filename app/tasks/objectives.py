"""Head objectives: the loss a head trains with and how a linear head is fitted for it.

Three objectives cover the head tasks: one class of many (softmax cross-entropy; per token
for token classification), independent labels (sigmoid binary cross-entropy), and a score
(mean squared error). The losses are transformers' own for these problem types. Head fits run
on standardised features (app.training.heads); L-BFGS runs in chunks of iterations with a
cancel check between them, so a cancel lands within a second or two even on a big probe.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from app.tasks.base import IGNORE, ProblemType

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

Tick = Callable[[], None]  # raises when the job is cancelled; yields to queued requests
Head = tuple[np.ndarray, np.ndarray]  # weight [rows, features], bias [rows]
_LBFGS_CHUNK = 100  # iterations between cancel checks
_LBFGS_MAX = 1000


class SingleLabel:
    """One class of many a row (or a token): softmax cross-entropy."""

    label_dtype = torch.long
    problem_type: ProblemType | None = None  # transformers infers single-label from integer labels

    def loss(self, logits: torch.Tensor, gold: torch.Tensor, *, reduction: str) -> torch.Tensor:
        """Cross-entropy; token logits are flattened, unlabelled positions (IGNORE) skipped."""
        return F.cross_entropy(
            logits.flatten(0, -2), gold.flatten(), ignore_index=IGNORE, reduction=reduction
        )

    def count(self, gold: torch.Tensor) -> int:
        """Labelled positions."""
        return int((gold != IGNORE).sum())

    def separable(self, y: np.ndarray) -> bool:
        """At least two classes: one alone leaves nothing to separate."""
        return len(np.unique(y)) >= 2

    def fit(self, x: np.ndarray, y: np.ndarray, *, rows: int, c: float, tick: Tick) -> Head:
        """Multinomial logistic regression, one head row a class."""
        lr = logistic(x, y, c=c, tick=tick)
        # Classes absent from the rows get a bias that keeps them from ever being predicted.
        weight, bias = np.zeros((rows, x.shape[1])), np.full(rows, -10.0)
        classes = lr.classes_.astype(int)
        if len(classes) == 2:  # sklearn's binary model is one row: split it symmetrically
            weight[classes[1]], bias[classes[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
            weight[classes[0]], bias[classes[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
        else:
            weight[classes], bias[classes] = lr.coef_, lr.intercept_
        return weight, bias

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Accuracy."""
        return float(np.mean(logits.argmax(axis=1) == y))

    def confidences(
        self, logits: torch.Tensor, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities [rows, classes] and the gold class, for calibration error."""
        return logits.softmax(dim=-1), gold


class MultiLabel:
    """Independent yes/no labels: sigmoid binary cross-entropy over a multi-hot target."""

    label_dtype = torch.float32
    problem_type: ProblemType | None = None  # transformers infers multi-label from float labels

    def loss(self, logits: torch.Tensor, gold: torch.Tensor, *, reduction: str) -> torch.Tensor:
        """Binary cross-entropy of every (row, label)."""
        return F.binary_cross_entropy_with_logits(
            logits, gold.to(logits.dtype), reduction=reduction
        )

    def count(self, gold: torch.Tensor) -> int:
        """Every (row, label) is a term."""
        return gold.numel()

    def separable(self, y: np.ndarray) -> bool:
        """Labels without both answers keep a zero head row (see `fit`)."""
        return True

    def fit(self, x: np.ndarray, y: np.ndarray, *, rows: int, c: float, tick: Tick) -> Head:
        """One binary logistic regression a label that has both answers in the rows."""
        weight, bias = np.zeros((rows, x.shape[1])), np.zeros(rows)
        for j in range(rows):
            if 0 < y[:, j].sum() < len(y):
                lr = logistic(x, y[:, j], c=c, tick=tick)
                weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        return weight, bias

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Per-label accuracy at probability 0.5."""
        return float(np.mean((logits > 0) == (y > 0.5)))

    def confidences(
        self, logits: torch.Tensor, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each label a binary question: [no, yes] probabilities and the gold answer."""
        p = torch.sigmoid(logits).flatten()
        return torch.stack([1 - p, p], dim=-1), gold.flatten().long()


class Score:
    """A real-valued target: mean squared error of the head's one output."""

    label_dtype = torch.float32
    problem_type: ProblemType | None = "regression"  # one float label would read as multi-label

    def loss(self, logits: torch.Tensor, gold: torch.Tensor, *, reduction: str) -> torch.Tensor:
        """Mean squared error of the single output."""
        return F.mse_loss(logits[..., 0], gold.to(logits.dtype), reduction=reduction)

    def count(self, gold: torch.Tensor) -> int:
        """One term a row."""
        return len(gold)

    def separable(self, y: np.ndarray) -> bool:
        """Any targets can be fitted."""
        return True

    def fit(self, x: np.ndarray, y: np.ndarray, *, rows: int, c: float, tick: Tick) -> Head:
        """Ridge regression, its strength the inverse of `c`."""
        from sklearn.linear_model import Ridge  # see `logistic`: loaded when a head is fitted

        ridge = Ridge(alpha=1.0 / c).fit(x, y)
        return ridge.coef_.reshape(1, -1), np.atleast_1d(ridge.intercept_)

    def score(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Negative mean squared error."""
        return -float(np.mean((logits[:, 0] - y) ** 2))


def logistic(x: np.ndarray, y: np.ndarray, *, c: float, tick: Tick) -> LogisticRegression:
    """L-BFGS in warm-started chunks, checking for a cancel between them."""
    # Imported here: scikit-learn takes seconds to load, and the registry and the routes
    # import the tasks without ever scoring or fitting.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=_LBFGS_CHUNK, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a chunk is not meant to converge
        for _ in range(_LBFGS_MAX // _LBFGS_CHUNK):
            tick()
            model.fit(x, y)
            if int(np.max(model.n_iter_)) < _LBFGS_CHUNK:
                break
    return model
