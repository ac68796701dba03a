"""Training's memory options: activation checkpointing changes memory, not arithmetic (every
method trains to the same weights, dropout draws are replayed in the recomputation);
micro-batches reach the loop when set; the heap is trimmed after every step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load
from torch.utils.checkpoint import checkpoint
from transformers import modeling_utils

from app.base import FrozenBase
from app.registry.store import WEIGHTS_FILE
from app.training import loop
from app.training.trainer import train
from app.training.types import CancelToken
from tests.unit.training.test_trainer import Recorder, make_plan


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "prefix"])  # prefix: never on
def test_checkpointed_training_gives_the_same_weights(
    tiny_base: FrozenBase, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    weights = []
    for recompute in (False, True):
        outcome = train(
            make_plan(method, epochs=1, dropout=0.1),
            base=tiny_base,
            reporter=Recorder(),
            cancel=CancelToken(),
            max_rank=64,
            max_tokens=64,
            checkpoint_activations=recompute,
        )
        weights.append(load(outcome.files[WEIGHTS_FILE]))
    plain, checkpointed = weights
    assert plain.keys() == checkpointed.keys()
    for name, tensor in plain.items():
        assert torch.allclose(tensor, checkpointed[name], atol=1e-5), name
    # the run moved the weights (else the comparison says nothing), and really recomputed
    assert outcome.best["step"] > 0
    assert bool(calls) == (method != "prefix"), len(calls)


def test_the_base_is_left_without_checkpointing(tiny_base: FrozenBase) -> None:
    """The view shares the base's tensors, not its modules: serving never recomputes."""
    train(
        make_plan("lora", epochs=1),
        base=tiny_base,
        reporter=Recorder(),
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=64,
        checkpoint_activations=True,
    )
    assert not tiny_base.model.is_gradient_checkpointing


def test_the_heap_is_trimmed_after_every_step(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a step freed goes back to the OS between steps (and once more at the end)."""
    trims = []
    monkeypatch.setattr(loop, "trim_heap", lambda: trims.append(1))
    reporter = Recorder()
    train(
        make_plan("lora", epochs=1),
        base=tiny_base,
        reporter=reporter,
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=64,
    )
    assert len(trims) >= max(reporter.steps) == 4


@pytest.mark.parametrize("tokens", [None, 16])
def test_micro_batch_tokens_reach_the_loop(
    tiny_base: FrozenBase, monkeypatch: pytest.MonkeyPatch, tokens: int | None
) -> None:
    budgets = []
    real = loop.micro_batches

    def spy(batch: dict[str, torch.Tensor], budget: int | None) -> list[dict[str, torch.Tensor]]:
        budgets.append(budget)
        return real(batch, budget)

    monkeypatch.setattr(loop, "micro_batches", spy)
    outcome = train(
        make_plan("lora", epochs=1),
        base=tiny_base,
        reporter=Recorder(),
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=64,
        micro_batch_tokens=tokens,
    )
    assert budgets and set(budgets) == {tokens}
    assert outcome.best["step"] >= 0
