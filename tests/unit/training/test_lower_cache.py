"""Frozen lower layers computed once: the same losses and gradients as the whole model, the
right layer to start from, the memory bound, and `upper_layers` checked at submission."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.training import encoding, methods
from app.training.encoding import Example, encode_rows
from app.training.hyperparameters import Hyperparameters
from app.training.lower_cache import build_cache, first_adapted_layer, skipping_lower
from app.training.pooled import PooledHeadModel
from app.training.preflight import preflight
from app.training.trainer import train
from app.training.types import CancelToken, TrainingPlan
from app.training.view import build_view
from tests.unit.training.test_trainer import Recorder, make_plan, rows

UPPER = ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.output.dense"]


def _model(base: FrozenBase) -> tuple[PooledHeadModel, Any]:
    torch.manual_seed(0)
    view = build_view(base, task="classification", num_labels=2)
    hp = Hyperparameters(learning_rate=1e-3, alpha=16.0)
    peft = methods.wrap(view, "lora", hp, "classification", base, targets=UPPER)
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: give the adapter an effect to compare
            torch.nn.init.normal_(param, std=0.1)
    model = PooledHeadModel(peft, backbone=base.prefix, task="classification")
    model.eval()  # no dropout: the two paths must then agree to rounding
    backbone: Any = view.bert
    return model, backbone


def _examples(base: FrozenBase, count: int = 12) -> list[Example]:
    return encode_rows(
        rows(count, 3), base.tokenizer, task="classification", labels=["neg", "pos"], max_length=32
    )


def _collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    return encoding.collate(examples, task="classification", pad_id=0, device=torch.device("cpu"))


def _loss_and_grads(model: PooledHeadModel, batch: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def test_cached_lower_layers_give_the_same_loss_and_gradients(tiny_base: FrozenBase) -> None:
    model, backbone = _model(tiny_base)
    examples = _examples(tiny_base)
    cache = build_cache(
        backbone, examples, start=1, collate=_collate, max_bytes=1 << 30, tick=lambda: None
    )
    assert cache is not None and cache.start == 1
    batch = _collate(examples[:7])  # rows of different lengths: padding in the batch
    loss, grads = _loss_and_grads(model, batch)
    calls: list[int] = []
    embeddings = backbone.embeddings
    handle = embeddings.register_forward_hook(lambda *_: calls.append(1))
    with skipping_lower(backbone, cache):
        cached_loss, cached_grads = _loss_and_grads(model, batch)
    handle.remove()
    assert calls == []  # the embeddings (and layer 0) did not run
    assert cached_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == cached_grads.keys() and any("lora_B" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-4, atol=1e-6)
    assert backbone.embeddings is embeddings and len(backbone.encoder.layer) == 2  # restored


def test_a_batch_with_a_row_not_cached_runs_the_whole_model(tiny_base: FrozenBase) -> None:
    model, backbone = _model(tiny_base)
    examples = _examples(tiny_base)
    cache = build_cache(
        backbone, examples[:4], start=1, collate=_collate, max_bytes=1 << 30, tick=lambda: None
    )
    assert cache is not None
    batch = _collate(examples[2:8])
    calls: list[int] = []
    handle = backbone.embeddings.register_forward_hook(lambda *_: calls.append(1))
    with skipping_lower(backbone, cache), torch.no_grad():
        logits = model(**batch).logits
    handle.remove()
    assert calls == [1]
    with torch.no_grad():
        torch.testing.assert_close(logits, model(**batch).logits)


def test_no_cache_past_the_byte_limit_or_without_a_frozen_layer(tiny_base: FrozenBase) -> None:
    _unused, backbone = _model(tiny_base)
    examples = _examples(tiny_base)
    build = functools.partial(build_cache, backbone, examples, collate=_collate, tick=lambda: None)
    assert build(start=1, max_bytes=100) is None
    assert build(start=0, max_bytes=1 << 30) is None
    assert build(start=2, max_bytes=1 << 30) is None  # past the last layer: nothing to train


@pytest.mark.parametrize(
    ("targets", "start"),
    [
        (None, 0),
        (UPPER, 1),
        (["bert.encoder.layer.3.output.dense", "bert.encoder.layer.10.output.dense"], 3),
        (["bert.encoder.layer.2.output.dense", "bert.pooler.dense"], 2),
        (["bert.encoder.layer.2.output.dense", "bert.embeddings.proj"], 0),
    ],
)
def test_first_adapted_layer(targets: list[str] | None, start: int) -> None:
    assert first_adapted_layer(targets) == start


def test_upper_layers_train_from_the_cache_end_to_end(tiny_base: FrozenBase) -> None:
    reporter = Recorder()
    outcome = train(
        make_plan(upper_layers=1, epochs=2),
        base=tiny_base,
        reporter=reporter,
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=128,
    )
    messages = [d.get("message", "") for k, d in reporter.events if k == "info"]
    assert any("computed once" in m for m in messages), messages
    config = outcome.files["adapter_config.json"].decode()
    assert "layer.1." in config and "layer.0." not in config


def test_upper_layers_past_the_cache_limit_still_train(tiny_base: FrozenBase) -> None:
    reporter = Recorder()
    train(
        make_plan(upper_layers=1, epochs=1),
        base=tiny_base,
        reporter=reporter,
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=128,
        lower_cache_mib=0,
    )
    messages = [d.get("message", "") for k, d in reporter.events if k == "info"]
    assert any("computed at every step" in m for m in messages), messages


def _plan(**hp: Any) -> TrainingPlan:
    return make_plan(**hp)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(upper=st.one_of(st.integers(-5, 2000), st.floats(allow_nan=True), st.text(max_size=3)))
def test_upper_layers_is_checked_at_submission(tiny_base: FrozenBase, upper: Any) -> None:
    plan = _plan(upper_layers=upper)
    valid = isinstance(upper, int) and 1 <= upper <= tiny_base.num_layers
    if valid:
        setup = preflight(plan, base=tiny_base, max_rank=64, max_tokens=128)
        assert setup.targets and all(".layer." in t for t in setup.targets)
        assert first_adapted_layer(setup.targets) == tiny_base.num_layers - upper
        return
    with pytest.raises(SwitchyardError) as caught:
        preflight(plan, base=tiny_base, max_rank=64, max_tokens=128)
    assert caught.value.status == 400
    assert caught.value.param == "hyperparameters.upper_layers"
    if isinstance(upper, int) and 1 <= upper <= 1024:
        assert f"upper_layers {upper} > {tiny_base.num_layers}" in str(caught.value)
