"""Generation runs in the one training loop: a NaN loss, a batch too big for memory and
micro-batches behave as they do for encoder tasks (test_trainer.py, test_training_memory.py),
on the tiny random Llama."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from safetensors.torch import load
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.tasks.generation import example_ids
from app.training import generation
from app.training.hyperparameters import Hyperparameters
from app.training.stepping import micro_batches, next_token_weight
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan
from app.training.view import build_view
from tests.unit.reporters import RecordingReporter
from tests.unit.tiny_decoder import serving_base, tiny_llama, tiny_tokenizer

WORDS = ["apple", "banana", "cherry", "dog", "fox", "quick", "brown", "lazy", "hello", "world"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return tiny_llama(tok)


@pytest.fixture
def base(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast) -> FrozenBase:
    return serving_base(model, tok)


def rows(words: list[str]) -> list[dict[str, str]]:
    """Rows of different lengths, so that micro-batches cut to different widths."""
    return [{"prompt": f"word: {w} " + "x " * (n % 3) + "->", "completion": " fine"}
            for n, w in enumerate(words)]  # fmt: skip


def run(base: FrozenBase, *, tokens: int | None = None, **hp: Any) -> TrainingOutcome:
    plan = TrainingPlan(
        adapter="a",
        task="generation",
        method="lora",
        train_rows=rows(WORDS[:8]),
        validation_rows=rows(WORDS[8:]),
        labels=[],
        hyperparameters={"batch_size": 4, "seed": 0, "rank": 4, "dropout": 0.0, **hp},
    )
    return train(
        plan,
        base=base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=16,
        max_tokens=64,
        micro_batch_tokens=tokens,
    )


@pytest.fixture
def memory_of(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Training forwards over `limit` tokens raise out-of-memory, as a small box would; the
    token counts of the training forwards that ran are recorded."""
    limit: int = request.param
    seen: list[int] = []

    def hook(module: nn.Module, args: Any) -> None:
        if isinstance(module, nn.Embedding) and module.training and args:
            tokens = int(args[0].numel())
            if tokens > limit:
                raise torch.OutOfMemoryError(f"{tokens} tokens > {limit}")
            seen.append(tokens)

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_a_nan_loss_names_the_learning_rate(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast
) -> None:
    poisoned = serving_base(model, tok)
    with torch.no_grad():
        poisoned.model.model.norm.weight.fill_(math.nan)
    with pytest.raises(SwitchyardError) as caught:
        run(poisoned, learning_rate=0.5, epochs=2)
    error = caught.value
    assert (error.status, error.code) == (400, "training_diverged")
    assert error.param == "hyperparameters.learning_rate"
    assert "step 1" in error.message and "0.5" in error.message


@pytest.mark.parametrize("memory_of", [16], indirect=True)
def test_a_batch_too_big_for_memory_names_the_batch_size(
    base: FrozenBase, memory_of: list[int]
) -> None:
    with pytest.raises(SwitchyardError) as caught:
        run(base, epochs=2)
    error = caught.value
    assert (error.status, error.code) == (400, "out_of_memory")
    assert error.param == "hyperparameters.batch_size" and "it was 4" in error.message
    assert memory_of == []


@pytest.mark.parametrize("memory_of", [16], indirect=True)
def test_micro_batches_fit_where_the_batch_did_not(base: FrozenBase, memory_of: list[int]) -> None:
    """The same job as above, with `train_micro_batch_tokens` 16: every training forward fits."""
    outcome = run(base, tokens=16, epochs=2)
    assert memory_of and max(memory_of) <= 16
    assert outcome.best["metric"] == "loss" and math.isfinite(outcome.best["value"])


def test_micro_batched_and_whole_runs_give_the_same_adapter(base: FrozenBase) -> None:
    """Without dropout, micro-batches' weighted gradients are the batch's: the same adapter."""
    whole = run(base, epochs=2)
    small = run(base, tokens=16, epochs=2)
    assert [h["step"] for h in small.history] == [h["step"] for h in whole.history]
    mine, theirs = (
        load(small.files["adapter_model.safetensors"]),
        load(whole.files["adapter_model.safetensors"]),
    )
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.allclose(mine[name], tensor, atol=1e-5), name


def test_micro_batch_gradients_add_up_to_the_batch(
    base: FrozenBase, tok: PreTrainedTokenizerFast
) -> None:
    """The next-token weight of each slice is its share of the batch's mean loss."""
    hp = Hyperparameters(rank=4, dropout=0.0)
    peft = generation.wrap(build_view(base, task="generation", num_labels=0), "lora", hp)
    examples = [example_ids(tok, row, max_length=64) for row in rows(WORDS[:4])]
    batch = next(
        generation.batches(
            examples,
            batch_size=4,
            shuffle=False,
            seed=0,
            pad_id=tok.pad_token_id,
            device=base.device,
        )
    )
    parts = micro_batches(batch, 16)
    assert len(parts) > 1
    assert sum(next_token_weight(p) for p in parts) == next_token_weight(batch)
    trained = [p for p in peft.parameters() if p.requires_grad]
    peft(**batch).loss.backward()
    expected = [_grad(p).clone() for p in trained]
    peft.zero_grad()
    for part in parts:
        (peft(**part).loss * next_token_weight(part) / next_token_weight(batch)).backward()
    for param, want in zip(trained, expected, strict=True):
        assert torch.allclose(_grad(param), want, atol=1e-6)


def _grad(param: torch.Tensor) -> torch.Tensor:
    assert param.grad is not None
    return param.grad
