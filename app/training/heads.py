"""Linear heads fitted on frozen features: LP-FT's starting head and the `linear_probe` head.

Features are standardised before fitting (one regularisation strength then suits every
feature scale, and L-BFGS converges in fewer iterations) and the scaling is folded back into
the weights, so the head reads raw features exactly as the serving path computes them. The
fit itself is the task's objective (app/tasks/objectives.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from app.tasks import head_task
from app.tasks.objectives import Head, Tick

__all__ = ["Head", "Tick", "choose_c", "fit_head", "no_tick"]

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
    fit = head_task(task).objective.fit
    weight, bias = fit((x - mean) / scale, y, rows=rows, c=c, tick=tick)
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
    score = head_task(task).objective.score
    for c in grid:
        weight, bias = fit_head(x[kept], y[kept], task=task, rows=rows, c=c, tick=tick)
        scores.append(score(x[held] @ weight.T + bias, y[held]))
    return grid[int(np.argmax(scores))]
