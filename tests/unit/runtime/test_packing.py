"""Sequence packing (app/runtime/packing.py): the plan's geometry, the inputs it builds, and
packed engine batches that give the padded batch's outputs for every method and readout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.runtime.engine import EncodeRequest, EncodeResult
from app.runtime.packing import (
    MIN_SAVING,
    PackingRule,
    packed_inputs,
    packing_rule,
    plan_packing,
)
from app.runtime.runtime import Runtime
from app.tasks import EMBEDDINGS
from tests.unit.method_adapters import SEQ, TOKEN, make_runtime, peft_files, register

# Lengths far apart, as real requests are: padded, they would hold about twice their tokens.
TEXTS = [
    "ok",
    "a gripping, beautiful and often very funny film about two brothers and their father",
    "meh",
    {"text": "the plot falls apart", "text_pair": "but the actors shine in every scene"},
    "dull",
    "an unexpectedly long sentence about nothing in particular, told slowly and with care",
]
LABELS = ["l0", "l1", "l2"]


@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=40),
    max_tokens=st.integers(0, 200),
)
@settings(max_examples=200, deadline=None)
def test_a_plan_places_every_row_once_in_order_without_overlap(
    lengths: list[int], max_tokens: int
) -> None:
    plan = plan_packing(lengths, max_tokens=max_tokens)
    if plan is None:
        return
    assert len(plan.places) == len(lengths) >= 2
    assert plan.width <= max(max_tokens, max(lengths))
    assert plan.bins * plan.width <= (1 - MIN_SAVING) * len(lengths) * max(lengths)
    taken: set[tuple[int, int]] = set()
    previous = (-1, -1)
    for (bin_, offset), length in zip(plan.places, lengths, strict=True):
        assert (bin_, offset) > previous  # batch order: the engine's slot order is kept
        previous = (bin_, offset)
        assert 0 <= bin_ < plan.bins and offset + length <= plan.width
        cells = {(bin_, i) for i in range(offset, offset + length)}
        assert not cells & taken
        taken |= cells


@given(
    lengths=st.lists(st.integers(1, 30), min_size=2, max_size=20),
    slots=st.lists(st.integers(0, 5), min_size=20, max_size=20),
)
@settings(max_examples=100, deadline=None)
def test_token_slots_name_each_rows_slot_and_padding_extends_the_last_row(
    lengths: list[int], slots: list[int]
) -> None:
    plan = plan_packing(lengths, max_tokens=64)
    if plan is None:
        return
    row_slots = slots[: len(lengths)]
    tokens = plan.token_slots(row_slots)
    assert len(tokens) == plan.bins * plan.width
    for (bin_, offset), length, slot in zip(plan.places, lengths, row_slots, strict=True):
        start = bin_ * plan.width + offset
        assert tokens[start : start + length] == [slot] * length
    if len(set(row_slots)) == 1:
        assert set(tokens) == set(row_slots)  # one adapter's batch stays uniform


def test_rows_of_one_length_are_not_packed_and_a_long_row_gets_its_own_bin() -> None:
    assert plan_packing([12, 12, 12, 12], max_tokens=256) is None  # nothing to save
    assert plan_packing([30], max_tokens=256) is None
    assert plan_packing([5, 9], max_tokens=0) is None  # packing switched off
    plan = plan_packing([300, 4, 5, 6, 3], max_tokens=64)
    assert plan is not None
    assert plan.width == 300 and plan.places[0] == (0, 0) and plan.places[1] == (1, 0)


@pytest.mark.parametrize("boolean", [True, False])
def test_each_token_attends_to_its_own_row_and_padding_to_padding(boolean: bool) -> None:
    plan = plan_packing([3, 1, 2, 9], max_tokens=9)
    assert plan is not None and plan.places[:3] == ((0, 0), (0, 3), (0, 4))
    rule = PackingRule(position_offset=0, boolean_mask=boolean)
    inputs = packed_inputs(
        plan,
        [[101, 7, 102], [101], [101, 102], list(range(9))],
        None,
        rule=rule,
        pad_id=0,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    assert inputs["position_ids"][0].tolist() == [0, 1, 2, 0, 0, 1, 0, 0, 0]
    assert inputs["input_ids"][0, :6].tolist() == [101, 7, 102, 101, 101, 102]
    mask = inputs["attention_mask"][0, 0]
    keep = mask if boolean else mask == 0
    assert keep[1, :3].all() and not keep[1, 3:].any()
    assert keep[3].tolist() == [False, False, False, True, False, False, False, False, False]
    assert keep[7, 6:].all() and not keep[7, :6].any()  # padding: every row has a key


def test_the_bert_family_packs_and_other_attention_kernels_do_not(tiny_base: FrozenBase) -> None:
    rule = packing_rule(tiny_base.model)
    assert rule is not None and rule.position_offset == 0
    config = tiny_base.model.config
    saved = config._attn_implementation
    try:
        config._attn_implementation = "flash_attention_2"
        assert packing_rule(tiny_base.model) is None
    finally:
        config._attn_implementation = saved
    assert packing_rule(nn.Linear(2, 2)) is None


def _probe(folder: Path, *, layers: list[int], width: int) -> Path:
    torch.manual_seed(11)
    folder.mkdir()
    config = {"peft_type": "LINEAR_PROBE", "layers": layers, "pooling": "mean"}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    weights = {"classifier.weight": torch.randn(3, width), "classifier.bias": torch.randn(3)}
    save_file(weights, str(folder / WEIGHTS_FILE))
    return folder


@pytest.fixture
def served(
    tiny_base: FrozenBase, settings: Settings, tiny_bert_dir: Path, tmp_path: Path
) -> tuple[Runtime, Registry]:
    runtime, registry = make_runtime(tiny_base, settings)
    for name, method, task, seed in [
        ("lora1", "lora", SEQ, 1),
        ("lora2", "lora", SEQ, 2),
        ("ia3", "ia3", SEQ, 3),
        ("tok", "lora", TOKEN, 4),
        ("prompt", "prompt", SEQ, 5),
    ]:
        folder = peft_files(
            tiny_bert_dir, tmp_path / name, method=method, task=task, labels=3, seed=seed
        )
        register(registry, name, folder, task=task, labels=LABELS)
    hidden = tiny_base.hidden_size
    probe = _probe(tmp_path / "probe", layers=[1, -1], width=2 * hidden)
    register(registry, "probe", probe, task=SEQ, labels=LABELS)
    return runtime, registry


def _jobs(runtime: Runtime, names: list[str]) -> list[EncodeRequest]:
    engine = runtime.encoder
    words = [t for t in TEXTS if isinstance(t, str)]
    jobs = []
    for name in names:
        task = TOKEN if name == "tok" else SEQ
        inputs = words if task == TOKEN else TEXTS
        rows = engine.prepare(inputs, task=task)
        jobs.append(EncodeRequest(key=AdapterRef(name, 1), task=task, rows=rows, raw=True))
    rows = engine.prepare(TEXTS, task=SEQ)
    params = {"pooling": "mean", "layers": [1, -1]}
    jobs.append(EncodeRequest(key=None, task=EMBEDDINGS, rows=rows, params=params))
    return jobs


def _run(
    runtime: Runtime, names: list[str], *, pack: int, adapters: int = 64
) -> tuple[list[EncodeResult], list]:
    runtime.encoder.pack_max_tokens = pack
    runtime.encoder.pack_max_adapters = adapters
    shapes: list[tuple[int, ...]] = []
    hook = runtime.base.model.register_forward_hook(
        lambda _m, _a, out: shapes.append(tuple(out.last_hidden_state.shape[:2]))
    )
    try:
        return runtime.encoder.run(_jobs(runtime, names)), shapes
    finally:
        hook.remove()


def _same(packed: list[EncodeResult], padded: list[EncodeResult]) -> None:
    for a, b in zip(packed, padded, strict=True):
        assert a.error is None and b.error is None, (a.error, b.error)
        for x, y in zip(a.outputs or [], b.outputs or [], strict=True):
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            assert x.shape == y.shape and (x - y).abs().max() < 1e-4, (x - y).abs().max()


def test_a_packed_mixed_batch_equals_the_padded_one(served: tuple[Runtime, Registry]) -> None:
    """LoRA, IA3, a token-classification LoRA, a probe reading two layers and bare embeddings
    over rows of very different lengths: packed into fewer sequences, the same numbers."""
    runtime, _ = served
    names = ["lora1", "lora2", "ia3", "tok", "probe"]
    padded, padded_shapes = _run(runtime, names, pack=0)
    packed, packed_shapes = _run(runtime, names, pack=64)
    rows, width = padded_shapes[0]
    bins, bin_width = packed_shapes[0]
    assert bins < rows and bins * bin_width < rows * width  # it did pack
    _same(packed, padded)


def test_one_adapters_batch_packs_on_its_fast_path(served: tuple[Runtime, Registry]) -> None:
    runtime, _ = served
    padded, _ = _run(runtime, ["lora1"], pack=0)
    packed, shapes = _run(runtime, ["lora1"], pack=256)
    assert shapes[0][0] == 1
    _same(packed, padded)


def test_prompt_rows_keep_the_padded_layout(served: tuple[Runtime, Registry]) -> None:
    """Virtual tokens change positions per row: such a batch is never packed."""
    runtime, _ = served
    padded, padded_shapes = _run(runtime, ["prompt", "lora1"], pack=0)
    packed, packed_shapes = _run(runtime, ["prompt", "lora1"], pack=256)
    assert packed_shapes == padded_shapes
    _same(packed, padded)


def test_by_default_only_batches_of_one_adapter_pack(
    served: tuple[Runtime, Registry], settings: Settings
) -> None:
    """Per token, each adapter of a mixed batch costs the layers a pair of small products;
    under the default limit such a batch keeps the padded layout, one adapter's packs."""
    runtime, _ = served
    limit = settings.pack_max_adapters
    _, mixed_shapes = _run(runtime, ["lora1", "lora2"], pack=256, adapters=limit)
    _, padded_shapes = _run(runtime, ["lora1", "lora2"], pack=0, adapters=limit)
    assert mixed_shapes == padded_shapes
    _, one_shapes = _run(runtime, ["lora1"], pack=256, adapters=limit)
    assert one_shapes[0][0] == 1


_WORDS = ["film", "dull", "a", "great", "plot", "the", "actors", "shine", "meh", "!", "é", "42"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    texts=st.lists(
        st.lists(st.sampled_from(_WORDS), min_size=0, max_size=40).map(" ".join),
        min_size=2,
        max_size=9,
    ),
    names=st.sampled_from([["lora1"], ["lora1", "ia3"], ["tok"], ["lora2", "probe"]]),
)
def test_any_batch_packs_to_the_padded_numbers(
    served: tuple[Runtime, Registry], texts: list[str], names: list[str]
) -> None:
    runtime, _ = served
    engine = runtime.encoder
    outputs = []
    for pack in (0, 16):  # small bins: several per batch, rows longer than a bin alone
        engine.pack_max_tokens, engine.pack_max_adapters = pack, 64
        jobs = [
            EncodeRequest(
                key=AdapterRef(name, 1),
                task=TOKEN if name == "tok" else SEQ,
                rows=engine.prepare(texts, task=TOKEN if name == "tok" else SEQ),
                raw=True,
            )
            for name in names
        ]
        outputs.append(engine.run(jobs))
    _same(outputs[1], outputs[0])
