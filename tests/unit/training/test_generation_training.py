"""Training task generation on a tiny random Llama: completion-only labels, LoRA and prefix
through PEFT on the shared base, and adapters the runtime serves exactly as PEFT runs them."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.base import FrozenBase
from app.config import Settings
from app.errors import SwitchyardError
from app.registry.catalog import Registry
from app.registry.records import AdapterRef
from app.registry.store import AdapterStore
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime
from app.tasks.generation import IGNORE, example_ids
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan
from tests.unit.reporters import RecordingReporter
from tests.unit.tiny_decoder import serving_base, tiny_llama, tiny_tokenizer

WORDS = [
    "apple",
    "banana",
    "cherry",
    "dog",
    "fox",
    "quick",
    "brown",
    "lazy",
    "hello",
    "world",
    "paris",
    "alice",
    "bob",
    "today",
    "fine",
    "code",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    """A constant answer: learnable by a rank-4 LoRA in a few dozen steps."""
    return [{"prompt": f"word: {w} ->", "completion": " fine"} for w in words]


def run(base: FrozenBase, method: str, **hp: Any) -> TrainingOutcome:
    plan = TrainingPlan(
        adapter="a",
        task="generation",
        method=method,
        train_rows=rows(WORDS[:12]),
        validation_rows=rows(WORDS[12:]),
        labels=[],
        hyperparameters={"batch_size": 4, "seed": 0, **hp},
    )
    return train(
        plan,
        base=base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=16,
        max_tokens=64,
    )


def test_prompt_completion_labels_cover_the_completion_and_eos(
    tok: PreTrainedTokenizerFast,
) -> None:
    ids, labels = example_ids(tok, {"prompt": "word: fox ->", "completion": " fine"}, max_length=64)
    prompt = tok("word: fox ->")["input_ids"]
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :] and ids[-1] == tok.eos_token_id
    short, _labels = example_ids(
        tok, {"prompt": "word: fox ->" * 9, "completion": " fine"}, max_length=8
    )
    assert len(short) == 8 and short[-1] == tok.eos_token_id  # the prompt's start was cut


def test_chat_labels_cover_assistant_turns_only(tok: PreTrainedTokenizerFast) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "fine"},
    ]
    ids, labels = example_ids(tok, {"messages": messages}, max_length=256)
    learned = tok.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])
    assert learned == "hello<|im_end|>\nfine<|im_end|>\n"
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ids) == rendered


def test_lora_learns_and_is_served_like_peft(
    base: FrozenBase, model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    before = {k: v.clone() for k, v in base.parameters.items()}
    outcome = run(base, "lora", epochs=12, learning_rate=1e-2, rank=4)
    assert outcome.best["metric"] == "loss" and outcome.metrics["token_accuracy"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in base.parameters.items())  # base untouched
    served = serve(base, outcome, tmp_path, ["word: lazy ->", "word: zebra ->"])
    assert [text for text, _ids in served] == [" fine", " fine"]
    reference = from_files(model, outcome)
    for prompt, (_text, ids) in zip(["word: lazy ->", "word: zebra ->"], served, strict=True):
        enc = tok(prompt, return_tensors="pt")
        out = reference.generate(**enc, max_new_tokens=6, do_sample=False)
        out = out[0, enc.input_ids.shape[1] :]
        assert out.tolist()[: len(ids)] == ids and out.tolist()[len(ids)] == tok.eos_token_id


def test_prefix_trains_and_is_served_like_peft(
    base: FrozenBase, model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    outcome = run(base, "prefix", epochs=3, num_virtual_tokens=5)
    config = outcome.files["adapter_config.json"].decode()
    assert '"PREFIX_TUNING"' in config and len(outcome.history) >= 1
    served = serve(base, outcome, tmp_path, ["word: lazy ->"], max_new_tokens=6)
    reference = from_files(model, outcome)
    ids = tok("word: lazy ->", return_tensors="pt").input_ids
    expected: list[int] = []
    with torch.no_grad():  # greedy over PEFT's forward (its generate drops prefixes here)
        for _ in range(6):
            nxt = int(reference(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            expected.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert served[0][1] == expected


def test_methods_without_a_generation_path_are_refused(base: FrozenBase) -> None:
    with pytest.raises(SwitchyardError) as info:
        run(base, "linear_probe")
    assert info.value.status == 400 and info.value.code == "unsupported_method"


def serve(
    base: FrozenBase,
    outcome: TrainingOutcome,
    tmp_path: Path,
    prompts: list[str],
    max_new_tokens: int = 8,
) -> list[tuple[str, list[int]]]:
    settings = Settings(store=tmp_path / "store", _env_file=None)
    registry = Registry(AdapterStore(settings.store), base, settings)
    version = registry.register(
        "a",
        config_bytes=outcome.files["adapter_config.json"],
        weights_bytes=outcome.files["adapter_model.safetensors"],
        task="generation",
        labels=[],
    )
    runtime = Runtime(base, registry, settings, Metrics())
    assert runtime.decoder is not None
    engine = runtime.decoder
    job = engine.run(
        [engine.prepare(AdapterRef("a", version), prompts, {"max_new_tokens": max_new_tokens})]
    )[0]
    return [(out.text, out.token_ids) for out in job.outputs if out is not None]


def from_files(model: LlamaForCausalLM, outcome: TrainingOutcome) -> PeftModel:
    """Plain PEFT loading the trained files onto an independent copy of the base."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in outcome.files.items():
            (Path(tmp) / name).write_bytes(data)
        return PeftModel.from_pretrained(copy.deepcopy(model), tmp).eval()
