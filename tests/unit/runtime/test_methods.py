"""Every adapter method served in one heterogeneous forward equals its own reference.

LoRA, IA3 and prompt tuning rows are checked against plain PEFT (< 1e-5); prefix rows against
the hand-written reference of tests/unit/method_adapters.py (PEFT cannot run prefix tuning on
BERT under transformers 5, see there). Rows without an adapter must be unaffected by the
prefix/prompt/IA3 rows that share their batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.runtime.engine import EncodeRequest
from app.runtime.runtime import Runtime
from app.tasks import EMBEDDINGS
from tests.unit.method_adapters import (
    SEQ,
    TOKEN,
    make_runtime,
    peft_files,
    peft_logits,
    prefix_logits,
    register,
)

TEXTS = [
    "a gripping, beautiful film",
    "meh",
    {"text": "the plot falls apart", "text_pair": "but the actors shine"},
    "an unexpectedly long sentence about nothing in particular at all",
]
LABELS = ["l0", "l1", "l2"]


@pytest.fixture
def served(tiny_base: FrozenBase, settings: Settings) -> tuple[Runtime, Registry]:
    return make_runtime(tiny_base, settings)


def forwards(model: nn.Module) -> list[tuple[int, ...]]:
    """Shapes of the base's forwards from now on (rows x width of its output)."""
    calls: list[tuple[int, ...]] = []
    model.register_forward_hook(
        lambda _m, _a, out: calls.append(tuple(out.last_hidden_state.shape[:2]))
    )
    return calls


def close(served: list[torch.Tensor], reference: list[torch.Tensor], what: str) -> None:
    assert len(served) == len(reference), what
    for row, (a, b) in enumerate(zip(served, reference, strict=True)):
        assert a.shape == b.shape, (what, row, a.shape, b.shape)
        assert (a - b).abs().max() < 1e-5, (what, row, (a - b).abs().max())


@pytest.mark.parametrize("task", [SEQ, TOKEN])
def test_mixed_methods_in_one_forward_equal_their_references(
    task: str,
    served: tuple[Runtime, Registry],
    tiny_bert_dir: Path,
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    runtime, registry = served
    engine = runtime.encoder
    inputs = TEXTS if task == SEQ else [t for t in TEXTS if isinstance(t, str)]
    # Prompts of two lengths (and prefixes of two lengths) so rows are padded against each other.
    specs = [("lora", 0), ("ia3", 0), ("prompt", 3), ("prompt", 5), ("prefix", 2), ("prefix", 4)]
    folders = {}
    for n, (method, virtual) in enumerate(specs):
        name = f"{method}{virtual}"
        folders[name] = peft_files(
            tiny_bert_dir,
            tmp_path / name,
            method=method,
            task=task,
            labels=3,
            seed=n,
            virtual=max(virtual, 1),
        )
        register(registry, name, folders[name], task=task, labels=LABELS)
    jobs = [
        EncodeRequest(
            key=AdapterRef(name, 1), task=task, rows=engine.prepare(inputs, task=task), raw=True
        )
        for name in folders
    ]
    jobs.append(EncodeRequest(key=None, task=EMBEDDINGS, rows=engine.prepare(inputs, task=task)))
    calls = forwards(runtime.base.model)
    results = engine.run(jobs)
    assert len(calls) == 1, calls  # six adapters of four methods and a bare job: one forward
    assert all(r.error is None for r in results), [r.error for r in results]
    for job, result, (method, virtual) in zip(jobs, results, specs, strict=False):
        name = job.key[0]  # type: ignore[index]
        if method == "prefix":
            reference = prefix_logits(tiny_bert_dir, folders[name], tokenizer, inputs, task=task)
        else:
            reference = peft_logits(
                tiny_bert_dir,
                folders[name],
                tokenizer,
                inputs,
                task=task,
                labels=3,
                virtual=virtual,
            )
        close(result.outputs or [], reference, name)
    # the bare rows are what the bare base gives them alone
    alone = engine.run([jobs[-1]])[0].outputs or []
    close(
        [torch.tensor(v) for v in results[-1].outputs or []],
        [torch.tensor(v) for v in alone],
        "bare",
    )


def test_prefix_batch_leaves_rows_without_prefix_as_the_unpatched_base(
    served: tuple[Runtime, Registry],
    tiny_bert_dir: Path,
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    runtime, registry = served
    runtime.encoder.pack_max_tokens = 0  # bit for bit against the padded base (no packing)
    folder = peft_files(
        tiny_bert_dir, tmp_path / "p", method="prefix", task=SEQ, labels=3, seed=7, virtual=6
    )
    register(registry, "p", folder, task=SEQ, labels=LABELS)
    plain = BertModel.from_pretrained(tiny_bert_dir).eval()  # never patched
    texts = [t for t in TEXTS if isinstance(t, str)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    rows = runtime.encoder.prepare(texts, task=SEQ)
    resident = runtime.cache.acquire("p", 1)
    try:
        slots = [resident.slot, 0, 0]
        with torch.inference_mode():
            expected = plain(**batch).last_hidden_state
            mixed = runtime.encoder._forward(rows, slots, need_hidden=False).last
            bare = runtime.encoder._forward(rows, [0, 0, 0], need_hidden=False).last
    finally:
        runtime.cache.release(resident)
    mask = batch["attention_mask"].bool()
    for row in (1, 2):
        assert torch.allclose(mixed[row][mask[row]], expected[row][mask[row]], atol=1e-6)
    assert not torch.allclose(mixed[0][mask[0]], expected[0][mask[0]], atol=1e-3)
    assert torch.equal(bare, expected)  # no prefix row: the original attention, bit for bit


def _probe_files(folder: Path, *, layers: list[int], rows: int, width: int, seed: int) -> Path:
    torch.manual_seed(seed)
    folder.mkdir()
    config = {"peft_type": "LINEAR_PROBE", "layers": layers, "pooling": "mean"}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    save_file(
        {"classifier.weight": torch.randn(rows, width), "classifier.bias": torch.randn(rows)},
        str(folder / WEIGHTS_FILE),
    )
    return folder


def test_head_only_adapters_over_the_same_inputs_share_one_base_pass(
    served: tuple[Runtime, Registry],
    tiny_base: FrozenBase,
    tmp_path: Path,
) -> None:
    runtime, registry = served
    engine = runtime.encoder
    hidden = tiny_base.hidden_size
    for n in range(5):
        layers = [-1] if n % 2 else [1, -1]
        folder = _probe_files(
            tmp_path / f"probe{n}", layers=layers, rows=3, width=hidden * len(layers), seed=n
        )
        register(registry, f"probe{n}", folder, task=SEQ, labels=LABELS)
    jobs = [
        EncodeRequest(
            key=AdapterRef(f"probe{n}", 1), task=SEQ, rows=engine.prepare(TEXTS, task=SEQ), raw=True
        )
        for n in range(5)
    ]
    calls = forwards(runtime.base.model)
    shared = engine.run(jobs)
    # five adapters, one pass over the 4 distinct rows (packed: fewer, longer sequences)
    assert len(calls) == 1 and calls[0][0] <= len(TEXTS), calls
    for job, result in zip(jobs, shared, strict=True):
        alone = engine.run([job])[0].outputs or []
        close(result.outputs or [], alone, str(job.key))
    assert all(
        resident_slot == 0
        for resident_slot in [runtime.cache.acquire(f"probe{n}", 1).slot for n in range(5)]
    )


def test_linear_probe_on_tokens_reads_the_chosen_layers(
    served: tuple[Runtime, Registry],
    tiny_base: FrozenBase,
    tmp_path: Path,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    runtime, registry = served
    hidden = tiny_base.hidden_size
    folder = _probe_files(tmp_path / "tok", layers=[1, 2], rows=3, width=2 * hidden, seed=3)
    register(registry, "tok", folder, task=TOKEN, labels=["O", "B-X", "I-X"])
    texts = ["Angela Merkel went to Paris", "hi"]
    rows = runtime.encoder.prepare(texts, task=TOKEN)
    out = runtime.encoder.run(
        [EncodeRequest(key=AdapterRef("tok", 1), task=TOKEN, rows=rows, raw=True)]
    )[0]
    plain = BertModel.from_pretrained(tiny_bert_dir).eval()
    weight_path = folder / WEIGHTS_FILE
    from safetensors.torch import load_file

    head = load_file(str(weight_path))
    reference = []
    with torch.inference_mode():
        for text in texts:
            states = plain(
                **tokenizer(text, return_tensors="pt"), output_hidden_states=True
            ).hidden_states
            x = torch.cat([states[1][0], states[2][0]], dim=-1)
            reference.append(x @ head["classifier.weight"].t() + head["classifier.bias"])
    close(out.outputs or [], reference, "token probe")
    decoded = runtime.encoder.run([EncodeRequest(key=AdapterRef("tok", 1), task=TOKEN, rows=rows)])[
        0
    ].outputs
    assert decoded is not None and len(decoded) == 2


def test_slots_are_reused_across_methods(
    served: tuple[Runtime, Registry],
    tiny_bert_dir: Path,
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Evicting an IA3 / prompt / prefix adapter clears its slot for the next one."""
    runtime, registry = served
    runtime.cache.limits.max_slots = 1
    inputs = ["a gripping, beautiful film", "meh"]
    for n, method in enumerate(["ia3", "prompt", "prefix", "lora", "ia3"]):
        name = f"{method}-{n}"
        folder = peft_files(
            tiny_bert_dir,
            tmp_path / name,
            method=method,
            task=SEQ,
            labels=3,
            seed=20 + n,
            virtual=3,
        )
        register(registry, name, folder, task=SEQ, labels=LABELS)
        job = EncodeRequest(
            key=AdapterRef(name, 1),
            task=SEQ,
            rows=runtime.encoder.prepare(inputs, task=SEQ),
            raw=True,
        )
        got = runtime.encoder.run([job])[0].outputs or []
        reference = (
            prefix_logits(tiny_bert_dir, folder, tokenizer, inputs, task=SEQ)
            if method == "prefix"
            else peft_logits(tiny_bert_dir, folder, tokenizer, inputs, task=SEQ, labels=3)
        )
        close(got, reference, name)
    assert runtime.layers.prompts.empty and runtime.layers.prefixes is not None
    assert runtime.layers.prefixes.empty
