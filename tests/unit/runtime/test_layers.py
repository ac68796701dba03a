"""Multi-adapter layers: one forward over rows of different adapters equals each adapter's own
PEFT forward, rows without an adapter get exactly the base output, and growing keeps slots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore
from app.runtime.batch_context import BatchContext
from app.runtime.engine import EncodeRequest
from app.runtime.layers import LayerSet, MultiLoraLinear
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime
from app.tasks import EMBEDDINGS
from tests.conftest import peft_adapter
from tests.unit.peft_reference import as_vector, peft_logits, peft_model

TEXTS = [
    "a gripping, beautiful film",
    "the plot falls apart",
    "meh",
    "an unexpectedly long sentence about nothing in particular at all",
]
RAW = {"top_k": None, "function_to_apply": "none"}


@dataclass
class Made:
    name: str
    folder: Path
    labels: list[str]


# ---------------------------------------------------------------- one layer, by hand
def test_multi_lora_linear_matches_the_formula() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    ctx = BatchContext()
    layer = MultiLoraLinear(base, ctx)
    layer.grow(3, 4)
    a1, b1 = torch.randn(2, 6), torch.randn(5, 2)
    a2, b2 = torch.randn(4, 6), torch.randn(5, 4)
    layer.assign(1, (a1, b1))
    layer.assign(2, (a2, b2))
    x = torch.randn(4, 3, 6)
    expected = base(x)
    expected[0] += x[0] @ a1.t() @ b1.t()
    expected[2] += x[2] @ a2.t() @ b2.t()
    expected[3] += x[3] @ a1.t() @ b1.t()
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))  # no route: the base layer alone
        ctx.slot_ids, ctx.uniform_slot, ctx.active_slots = (
            torch.tensor([1, 0, 2, 1]),
            None,
            frozenset({1, 2}),
        )
        mixed = layer(x)
        assert (mixed - expected).abs().max() < 1e-5
        assert torch.equal(mixed[1], base(x)[1])
        ctx.slot_ids, ctx.uniform_slot, ctx.active_slots = (
            torch.tensor([2, 2, 2, 2]),
            2,
            frozenset({2}),
        )
        uniform = layer(x)
        assert (uniform - (base(x) + x @ a2.t() @ b2.t())).abs().max() < 1e-5
        # growing keeps what is loaded; clearing a slot zeroes only that slot
        layer.grow(9, 16)
        assert torch.equal(layer.lora_a[1, :2], a1) and torch.equal(layer.lora_b[2, :, :4], b2)
        assert torch.equal(layer(x), uniform)
        layer.assign(2, None)
        assert layer.ranks[2] == 0 and not layer.lora_a[2].any() and not layer.lora_b[2].any()
        assert torch.equal(layer.lora_a[1, :2], a1)


# ---------------------------------------------------------------- the whole base
@pytest.fixture
def runtime(tiny_base: FrozenBase, settings: Settings, tmp_path: Path) -> Runtime:
    registry = Registry(AdapterStore(settings.store), tiny_base, settings)
    runtime = Runtime(tiny_base, registry, settings, Metrics())
    runtime.registry = registry
    return runtime


def make(
    runtime: Runtime,
    tiny_bert_dir: Path,
    tmp_path: Path,
    name: str,
    *,
    r: int,
    labels: int,
    targets: str | list[str],
    seed: int,
) -> Made:
    folder = tmp_path / name
    files = peft_adapter(
        tiny_bert_dir, num_labels=labels, r=r, seed=seed, target_modules=targets, out=folder
    )
    names = [f"{name}-{i}" for i in range(labels)]
    registry: Registry = runtime.registry
    registry.register(
        name,
        config_bytes=files[CONFIG_FILE],
        weights_bytes=files[WEIGHTS_FILE],
        task="classification",
        labels=names,
    )
    return Made(name, folder, names)


@pytest.fixture
def three(runtime: Runtime, tiny_bert_dir: Path, tmp_path: Path) -> list[Made]:
    """Different ranks, label counts and target modules."""
    return [
        make(runtime, tiny_bert_dir, tmp_path, "wide", r=2, labels=2, targets="all-linear", seed=1),
        make(
            runtime,
            tiny_bert_dir,
            tmp_path,
            "qv",
            r=8,
            labels=3,
            targets=["query", "value"],
            seed=2,
        ),
        make(runtime, tiny_bert_dir, tmp_path, "dense", r=4, labels=4, targets=["dense"], seed=3),
    ]


def count_forwards(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda _m, _args, _kw, _out: calls.append(1), with_kwargs=True)
    return calls


def test_mixed_batch_equals_each_adapters_peft_forward(
    runtime: Runtime, three: list[Made], tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    engine = runtime.encoder
    jobs = []
    for n, made in enumerate(three):
        inputs = TEXTS[n:] + TEXTS[:n]  # every adapter sees every text, at different positions
        jobs.append(
            EncodeRequest(
                key=AdapterRef(made.name, 1),
                task="classification",
                rows=engine.prepare(inputs, task="classification"),
                params=RAW,
            )
        )
    jobs.append(
        EncodeRequest(key=None, task=EMBEDDINGS, rows=engine.prepare(TEXTS, task="classification"))
    )
    forwards = count_forwards(runtime.base.model)
    results = engine.run(jobs)
    assert len(forwards) == 1  # 3 adapters and the bare base: one forward
    assert all(r.error is None for r in results)
    for n, made in enumerate(three):
        inputs = TEXTS[n:] + TEXTS[:n]
        served = torch.stack([as_vector(o, made.labels) for o in results[n].outputs or []])
        reference = peft_logits(
            peft_model(tiny_bert_dir, made.folder, len(made.labels)), tokenizer, inputs
        )
        assert served.shape == reference.shape
        assert (served - reference).abs().max() < 1e-5, made.name
    # the same adapters one at a time agree with the mixed batch
    for n, made in enumerate(three):
        alone = engine.run([jobs[n]])[0].outputs or []
        for a, b in zip(alone, results[n].outputs or [], strict=True):
            assert (as_vector(a, made.labels) - as_vector(b, made.labels)).abs().max() < 1e-5


def test_rows_without_adapter_get_exactly_the_base_output(
    runtime: Runtime, three: list[Made], tokenizer: PreTrainedTokenizerBase
) -> None:
    model, layers = runtime.base.model, runtime.layers
    residents = [runtime.cache.acquire(m.name, 1) for m in three]
    batch = tokenizer(TEXTS * 2, padding=True, return_tensors="pt")
    slots = [residents[0].slot, 0, residents[1].slot, 0, residents[2].slot, 0, 0, residents[0].slot]
    with torch.inference_mode():
        bare = model(**batch).last_hidden_state
        layers.route(slots, runtime.base.device)
        try:
            mixed = model(**batch).last_hidden_state
        finally:
            layers.clear_route()
        again = model(**batch).last_hidden_state
    for row, slot in enumerate(slots):
        if slot == 0:
            assert torch.equal(mixed[row], bare[row]), row
        else:
            assert not torch.allclose(mixed[row], bare[row]), row
    assert torch.equal(again, bare)  # routing leaves no state behind
    for resident in residents:
        runtime.cache.release(resident)


def test_slot_growth_keeps_loaded_adapters(
    runtime: Runtime, tiny_bert_dir: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    first = make(
        runtime, tiny_bert_dir, tmp_path, "first", r=2, labels=2, targets="all-linear", seed=5
    )
    engine = runtime.encoder
    job = EncodeRequest(
        key=AdapterRef("first", 1),
        task="classification",
        rows=engine.prepare(TEXTS, task="classification"),
        params=RAW,
    )
    before = torch.stack([as_vector(o, first.labels) for o in engine.run([job])[0].outputs or []])
    slot = runtime.cache.acquire("first", 1).slot
    layer = runtime.layers.layers["encoder.layer.0.attention.self.query"]
    a_before = layer.lora_a[slot, :2].clone()
    b_before = layer.lora_b[slot, :, :2].clone()
    capacity = (runtime.layers.slot_capacity, runtime.layers.rank_capacity)

    others = [
        make(
            runtime,
            tiny_bert_dir,
            tmp_path,
            f"more{i}",
            r=8,
            labels=2,
            targets=["query", "key"],
            seed=10 + i,
        )
        for i in range(capacity[0])
    ]
    for made in others:
        runtime.cache.release(runtime.cache.acquire(made.name, 1))
    assert runtime.layers.slot_capacity > capacity[0]
    assert runtime.layers.rank_capacity > capacity[1]

    layer = runtime.layers.layers["encoder.layer.0.attention.self.query"]
    assert torch.equal(layer.lora_a[slot, :2], a_before)
    assert torch.equal(layer.lora_b[slot, :, :2], b_before)
    assert not layer.lora_a[slot, 2:].any()
    after = torch.stack([as_vector(o, first.labels) for o in engine.run([job])[0].outputs or []])
    assert (after - before).abs().max() < 1e-6
    reference = peft_logits(peft_model(tiny_bert_dir, first.folder, 2), tokenizer, TEXTS)
    assert (after - reference).abs().max() < 1e-5
    # and the newcomers are right too, in one mixed batch with the first
    jobs = [job] + [
        EncodeRequest(
            key=AdapterRef(m.name, 1),
            task="classification",
            rows=engine.prepare(TEXTS, task="classification"),
            params=RAW,
        )
        for m in others
    ]
    results = engine.run(jobs)
    for made, result in zip([first, *others], results, strict=True):
        served = torch.stack([as_vector(o, made.labels) for o in result.outputs or []])
        reference = peft_logits(peft_model(tiny_bert_dir, made.folder, 2), tokenizer, TEXTS)
        assert (served - reference).abs().max() < 1e-5, made.name


def test_layer_set_wraps_every_linear_once(runtime: Runtime, tiny_base: FrozenBase) -> None:
    layers = runtime.layers
    assert set(layers.layers) == set(tiny_base.linear_shapes)
    for path, layer in layers.layers.items():
        assert tiny_base.model.get_submodule(path) is layer
        assert layer.weight is tiny_base.parameters[path + ".weight"]
    with pytest.raises(KeyError):
        layers.assign(1, {"nowhere.dense": (torch.zeros(1, 2), torch.zeros(2, 1))})
    with pytest.raises(TypeError):
        LayerSet(tiny_base.model, ["encoder.layer.0.attention.self.query"])  # already wrapped
