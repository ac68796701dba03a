"""IA3, prompt and prefix tuning train through the trainer on the tiny base, and what they save
registers and serves exactly as the reference computes it (PEFT; hand-written for prefix)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.config import Settings
from app.registry.records import AdapterRef
from app.registry.store import WEIGHTS_FILE
from app.runtime.engine import EncodeRequest
from app.tasks import TOKEN_CLASSIFICATION
from app.training.trainer import train
from app.training.types import CancelToken, TrainingPlan
from tests.unit.method_adapters import (
    SEQ,
    TOKEN,
    make_runtime,
    peft_logits,
    prefix_logits,
    register_files,
)

GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
CITIES = ["paris", "london", "rome"]
FILLER = ["we", "went", "to", "see", "it", "today"]


class Events:
    """A reporter that keeps what the trainer says."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        pass

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "loss":
            self.losses.append(float(data["loss"]))


def rows(task: str, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for n in range(count):
        if task == TOKEN:
            words = [*rng.sample(FILLER, 3), rng.choice(CITIES)]
            rng.shuffle(words)
            out.append({"tokens": words, "tags": ["B-LOC" if w in CITIES else "O" for w in words]})
        else:
            pool, label = (GOOD, "pos") if n % 2 else (BAD, "neg")
            out.append(
                {"text": " ".join(rng.sample(pool, 2) + rng.sample(FILLER, 2)), "label": label}
            )
    return out


def labels_of(task: str) -> list[str]:
    """The labels `rows` draws for `task`."""
    return ["O", "B-LOC"] if task == TOKEN else ["neg", "pos"]


def plan_for(
    task: str, method: str, *, train_rows: int, hyperparameters: dict[str, Any]
) -> TrainingPlan:
    """A job on `train_rows` of `rows` (8 validation rows of another seed)."""
    return TrainingPlan(
        adapter="a",
        task=task,
        method=method,
        train_rows=rows(task, train_rows, 0),
        validation_rows=rows(task, 8, 1),
        labels=labels_of(task),
        hyperparameters=hyperparameters,
    )


@pytest.mark.parametrize("task", [SEQ, TOKEN])
@pytest.mark.parametrize("method", ["ia3", "prompt", "prefix"])
def test_method_trains_registers_and_serves(
    method: str,
    task: str,
    tiny_base: FrozenBase,
    settings: Settings,
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    labels = labels_of(task)
    plan = plan_for(
        task,
        method,
        train_rows=32,
        hyperparameters={
            "epochs": 3,
            "batch_size": 8,
            "log_every_steps": 1,
            "seed": 0,
            "head_init": "random",
            "num_virtual_tokens": 3,
            "early_stopping_patience": None,
        },
    )
    events = Events()
    runtime, registry = make_runtime(tiny_base, settings)  # serving patched first: training
    outcome = train(
        plan,
        base=tiny_base,
        reporter=events,
        cancel=CancelToken(),  # must not mind
        max_rank=64,
        max_tokens=64,
    )
    assert len(events.losses) == 12
    first, last = sum(events.losses[:3]) / 3, sum(events.losses[-3:]) / 3
    assert last < first, events.losses
    assert outcome.best and outcome.metrics

    register_files(registry, "a", outcome.files, task=task, labels=labels)
    folder = tmp_path / "saved"
    folder.mkdir()
    for name, data in outcome.files.items():
        (folder / name).write_bytes(data)
    texts = ["we went to paris today", "great fine movie", "rome"]
    engine = runtime.encoder
    served = engine.run(
        [
            EncodeRequest(
                key=AdapterRef("a", 1), task=task, rows=engine.prepare(texts, task=task), raw=True
            )
        ]
    )[0]
    assert served.error is None, served.error
    base_dir = tiny_base.path
    if method == "prefix":
        reference = prefix_logits(base_dir, folder, tokenizer, texts, task=task)
    else:
        reference = peft_logits(
            base_dir,
            folder,
            tokenizer,
            texts,
            task=task,
            labels=2,
            virtual=3 if method == "prompt" else 0,
        )
    for got, want in zip(served.outputs or [], reference, strict=True):
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-5
    decoded = engine.run(
        [EncodeRequest(key=AdapterRef("a", 1), task=task, rows=engine.prepare(texts, task=task))]
    )
    assert decoded[0].error is None and len(decoded[0].outputs or []) == 3


def test_prefix_parameters_get_gradients(tiny_base: FrozenBase) -> None:
    """The patched view attention really routes the prefix: its parameter learns."""
    from app.training.hyperparameters import Hyperparameters
    from app.training.methods import wrap
    from app.training.prefix import PrefixModel
    from app.training.view import build_view

    view = build_view(tiny_base, task=SEQ, num_labels=2)
    model = wrap(view, "prefix", Hyperparameters(num_virtual_tokens=2), SEQ, tiny_base)
    ids = torch.tensor([[101, 2204, 3185, 102, 0]])
    out = model(input_ids=ids, attention_mask=(ids > 0).long(), labels=torch.tensor([1]))
    out.loss.backward()
    grad = cast(PrefixModel, model).prompt_embeddings.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("model.bert."))


def test_prompt_token_labels_skip_virtual_positions(tiny_base: FrozenBase) -> None:
    from app.training.hyperparameters import Hyperparameters
    from app.training.methods import wrap
    from app.training.view import build_view

    view = build_view(tiny_base, task=TOKEN_CLASSIFICATION, num_labels=3)
    model = wrap(
        view, "prompt", Hyperparameters(num_virtual_tokens=4), TOKEN_CLASSIFICATION, tiny_base
    )
    ids = torch.tensor([[101, 2204, 3185, 102]])
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        labels=torch.tensor([[-100, 1, 2, -100]]),
    )
    assert out.logits.shape == (1, 4, 3) and torch.isfinite(out.loss)


def test_linear_probe_trains_on_tokens_and_serves_its_head(
    tiny_base: FrozenBase,
    settings: Settings,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    from safetensors.torch import load
    from transformers import BertModel

    labels = ["O", "B-LOC"]
    plan = TrainingPlan(
        adapter="p",
        task=TOKEN,
        method="linear_probe",
        train_rows=rows(TOKEN, 32, 0),
        validation_rows=rows(TOKEN, 8, 1),
        labels=labels,
        hyperparameters={"layers": [1, -1]},
    )
    runtime, registry = make_runtime(tiny_base, settings)
    outcome = train(
        plan, base=tiny_base, reporter=Events(), cancel=CancelToken(), max_rank=64, max_tokens=64
    )
    assert "entity_f1" in outcome.metrics
    register_files(registry, "p", outcome.files, task=TOKEN, labels=labels)
    texts = ["we went to paris today", "rome"]
    engine = runtime.encoder
    served = (
        engine.run(
            [
                EncodeRequest(
                    key=AdapterRef("p", 1),
                    task=TOKEN,
                    rows=engine.prepare(texts, task=TOKEN),
                    raw=True,
                )
            ]
        )[0].outputs
        or []
    )
    # PEFT-loadable probe files keep the head under PEFT's prefix (app.registry.probe_format)
    head = {
        k.removeprefix("base_model.model."): v for k, v in load(outcome.files[WEIGHTS_FILE]).items()
    }
    plain = BertModel.from_pretrained(tiny_base.path).eval()
    with torch.inference_mode():
        for text, got in zip(texts, served, strict=True):
            states = plain(
                **tokenizer(text, return_tensors="pt"), output_hidden_states=True
            ).hidden_states
            x = torch.cat([states[1][0], states[-1][0]], dim=-1)
            want = x @ head["classifier.weight"].t() + head["classifier.bias"]
            assert (got - want).abs().max() < 1e-5
