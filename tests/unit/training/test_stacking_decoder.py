"""Issue 17 on a decoder (the natural case): a generation LoRA trained on top of a stored causal
LoRA keeps the parent frozen, stores rank r1 + r2, and equals PEFT with both adapters active."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore
from app.training.stacking import PARENT, load_parent, stack_files
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan
from tests.unit.reporters import RecordingReporter
from tests.unit.tiny_decoder import serving_base, tiny_llama, tiny_tokenizer

WORDS = ["fox", "dog", "lazy", "brown", "quick", "hello", "world", "paris", "alice", "bob"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return tiny_llama(tok)


def run(base: FrozenBase, registry: Registry, **fields: Any) -> TrainingOutcome:
    rows = [{"prompt": f"word: {w} ->", "completion": " fine"} for w in WORDS]
    plan = TrainingPlan(
        adapter="a",
        task="generation",
        method="lora",
        train_rows=rows[:7],
        validation_rows=rows[7:],
        labels=[],
        **fields,
    )
    return train(
        plan,
        base=base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=16,
        max_tokens=64,
        parents=functools.partial(load_parent, registry),
    )


def peft_dir(model: LlamaForCausalLM, files: dict[str, bytes], folder: Path) -> PeftModel:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return PeftModel.from_pretrained(copy.deepcopy(model), folder).eval()


def test_generation_stacks_on_a_causal_lora(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    base = serving_base(model, tok)
    settings = Settings(store=tmp_path / "store", _env_file=None)
    registry = Registry(AdapterStore(settings.store), base, settings)
    hp = {"batch_size": 4, "seed": 0, "epochs": 2, "learning_rate": 1e-2}
    parent = run(base, registry, hyperparameters={**hp, "rank": 4})
    registry.register(
        "domain",
        config_bytes=parent.files[CONFIG_FILE],
        weights_bytes=parent.files[WEIGHTS_FILE],
        task="generation",
        labels=[],
    )
    stored = load(registry.store.read_file("domain", 1, WEIGHTS_FILE))
    child = run(
        base, registry, hyperparameters={**hp, "rank": 2}, base_adapter=AdapterRef("domain", 1)
    )
    assert json.loads(child.files[CONFIG_FILE])["r"] == 6
    assert child.parent == AdapterRef("domain", 1)
    assert child.domain_effect is not None and child.domain_effect["metric"] == "loss"
    after = load(registry.store.read_file("domain", 1, WEIGHTS_FILE))
    assert all(torch.equal(stored[k], after[k]) for k in stored)
    version = registry.register(
        "child",
        config_bytes=child.files[CONFIG_FILE],
        weights_bytes=child.files[WEIGHTS_FILE],
        task="generation",
        labels=[],
    )
    assert registry.meta("child", version).rank == 6


def test_decoder_stack_equals_peft_with_both_adapters(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    base = serving_base(model, tok)
    parent_dir, task_dir = tmp_path / "p", tmp_path / "t"
    parent_files = lora_files(model, parent_dir, r=4, targets=["q_proj", "v_proj"], seed=0)
    task_files = lora_files(model, task_dir, r=2, targets=["v_proj", "down_proj"], seed=1)
    settings = Settings(store=tmp_path / "store", _env_file=None)
    registry = Registry(AdapterStore(settings.store), base, settings)
    registry.register(
        "domain",
        config_bytes=parent_files[CONFIG_FILE],
        weights_bytes=parent_files[WEIGHTS_FILE],
        task="generation",
        labels=[],
    )
    stack = stack_files(task_files, load_parent(registry, AdapterRef("domain", 1)), base)
    both = PeftModel.from_pretrained(copy.deepcopy(model), task_dir)
    both.load_adapter(str(parent_dir), adapter_name=PARENT)
    for module in both.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter(["default", PARENT])
    ids = tok(["word: zebra ->", "hello world"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = both.eval()(**ids).logits
        got = peft_dir(model, stack, tmp_path / "stack")(**ids).logits
    assert (got - reference).abs().max() < 1e-4


def lora_files(
    model: LlamaForCausalLM, out: Path, *, r: int, targets: list[str], seed: int
) -> dict[str, bytes]:
    """A causal LoRA made with plain PEFT (random non-zero B, rsLoRA), its files."""
    torch.manual_seed(seed)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=3 * r, target_modules=targets,
        use_rslora=True,
    )  # fmt: skip
    peft = get_peft_model(copy.deepcopy(model), config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    peft.save_pretrained(str(out))
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name in (CONFIG_FILE, WEIGHTS_FILE)}
