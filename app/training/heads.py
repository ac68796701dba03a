"""Linear heads fitted on frozen features: LP-FT's starting head and the `linear_probe` head.

Features are standardised before fitting (one regularisation strength then suits every
feature scale, and L-BFGS converges in fewer iterations) and the scaling is folded back into
the weights, so the head reads raw features exactly as the serving path computes them. The
solver runs in chunks of iterations with a cancel check in between: a cancel lands within a
second or two even while a big probe is fitted.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

from app.tasks import MULTI_LABEL, REGRESSION

Tick = Callable[[], None]  # raises when the job is cancelled; yields to queued requests
Head = tuple[np.ndarray, np.ndarray]  # weight [rows, features], bias [rows]
_LBFGS_CHUNK = 100  # iterations between cancel checks
_LBFGS_MAX = 1000
_SPLIT_SEED = 4321


def no_tick() -> None:
    """A Tick that never cancels."""


def fit_head(
    x: np.ndarray, y: np.ndarray, *, task: str, rows: int, c: float = 1.0, tick: Tick = no_tick
) -> Head:
    """(weight [rows, features], bias [rows]) of a linear head fitted on frozen features."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0  # constant features: leave them unscaled
    weight, bias = _fit((x - mean) / scale, y, task=task, rows=rows, c=c, tick=tick)
    weight = weight / scale
    return weight, bias - weight @ mean


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    rows: int,
    grid: Sequence[float],
    tick: Tick = no_tick,
) -> float:
    """The strength of `grid` that scores best on a seeded fifth of the rows held out."""
    order = list(range(len(x)))
    random.Random(_SPLIT_SEED).shuffle(order)
    cut = max(1, len(order) // 5)
    held, kept = order[:cut], order[cut:]
    scores = []
    for c in grid:
        weight, bias = fit_head(x[kept], y[kept], task=task, rows=rows, c=c, tick=tick)
        scores.append(_score(x[held] @ weight.T + bias, y[held], task))
    return grid[int(np.argmax(scores))]


def _score(logits: np.ndarray, y: np.ndarray, task: str) -> float:
    if task == REGRESSION:
        return -float(np.mean((logits[:, 0] - y) ** 2))
    if task == MULTI_LABEL:
        return float(np.mean((logits > 0) == (y > 0.5)))
    return float(np.mean(logits.argmax(axis=1) == y))


def _fit(x: np.ndarray, y: np.ndarray, *, task: str, rows: int, c: float, tick: Tick) -> Head:
    if task == REGRESSION:
        ridge = Ridge(alpha=1.0 / c).fit(x, y)
        return ridge.coef_.reshape(1, -1), np.atleast_1d(ridge.intercept_)
    if task == MULTI_LABEL:
        weight, bias = np.zeros((rows, x.shape[1])), np.zeros(rows)
        for j in range(rows):
            if 0 < y[:, j].sum() < len(y):
                lr = _logistic(x, y[:, j], c=c, tick=tick)
                weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        return weight, bias
    lr = _logistic(x, y, c=c, tick=tick)
    # Classes absent from the rows get a bias that keeps them from ever being predicted.
    weight, bias = np.zeros((rows, x.shape[1])), np.full(rows, -10.0)
    classes = lr.classes_.astype(int)
    if len(classes) == 2:  # sklearn's binary model is one row: split it symmetrically
        weight[classes[1]], bias[classes[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
        weight[classes[0]], bias[classes[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
    else:
        weight[classes], bias[classes] = lr.coef_, lr.intercept_
    return weight, bias


def _logistic(x: np.ndarray, y: np.ndarray, *, c: float, tick: Tick) -> LogisticRegression:
    """L-BFGS in warm-started chunks, checking for a cancel between them."""
    model = LogisticRegression(C=c, max_iter=_LBFGS_CHUNK, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a chunk is not meant to converge
        for _ in range(_LBFGS_MAX // _LBFGS_CHUNK):
            tick()
            model.fit(x, y)
            if int(np.max(model.n_iter_)) < _LBFGS_CHUNK:
                break
    return model
