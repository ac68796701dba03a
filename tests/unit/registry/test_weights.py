"""Regression tests for adapter-file validation (issue 13): user regexes, derived values that
overflow, ambiguous heads decided by hash order, deep or non-text JSON, and linear_probe files
that plain PEFT must load."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_st
from safetensors.torch import save as save_st
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase, wrap_base
from app.errors import SwitchyardError
from app.registry.finite import MAX_LORA_SCALE
from app.registry.patterns import compile_patterns
from app.registry.probe_format import probe_files
from app.registry.validate import parse_json_object, parse_safetensors
from app.registry.weights import build_weights
from tests.conftest import peft_adapter
from tests.unit.peft_reference import as_vector

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LABELS = ["neg", "pos"]
QUERY = "encoder.layer.0.attention.self.query"
B_KEY = f"base_model.model.bert.{QUERY}.lora_B.weight"


def make_base(folder: Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> FrozenBase:
    model = BertModel.from_pretrained(folder, dtype=dtype)
    return wrap_base(model, tokenizer, name="tiny", path=folder, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def base(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> FrozenBase:
    return make_base(tiny_bert_dir, tokenizer, torch.float32)


@pytest.fixture(scope="module")
def lora(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return peft_adapter(tiny_bert_dir, r=4, out=tmp_path_factory.mktemp("lora"))


def build(base: FrozenBase, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    return build_weights(config, tensors, base, task="classification", labels=LABELS, max_rank=64)


def refused(base: FrozenBase, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    with pytest.raises(SwitchyardError) as info:
        build(base, config, tensors)
    assert 400 <= info.value.status < 500
    return info.value


def parts(files: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = parse_json_object(files[CONFIG], what=CONFIG, param=CONFIG)
    return config, parse_safetensors(files[WEIGHTS])


# ---------------------------------------------------------------- 1. regexes from users
def test_catastrophic_pattern_is_matched_in_milliseconds(
    base: FrozenBase, lora: dict[str, bytes]
) -> None:
    """`([a-z.]+)+Z` backtracks exponentially in Python's `re` on module names; RE2 is linear."""
    config, tensors = parts(lora)
    config["rank_pattern"] = {"([a-z.]+)+Z": 8, "(x+x+)+y": 8}
    config["alpha_pattern"] = {"([a-z.]+)+Z": 1}
    started = time.perf_counter()
    weights = build(base, config, tensors)
    assert time.perf_counter() - started < 0.5
    assert weights.rank == 4  # no module name ends in Z: every module keeps r


def test_catastrophic_pattern_on_a_long_name_stays_linear() -> None:
    """60 characters of [a-z.]: Python's `re` would take longer than the universe has left."""
    patterns = compile_patterns("rank_pattern", {"([a-z.]+)+Z": 2, "(a|aa)+$x": 3, "query": 4})
    started = time.perf_counter()
    assert patterns.value_for("a." * 30 + "query", 1) == 4
    assert patterns.value_for("a" * 5000, 1) == 1
    assert time.perf_counter() - started < 0.05


def test_pattern_keys_follow_peft(base: FrozenBase, tiny_bert_dir: Path, tmp_path: Path) -> None:
    """PEFT's rule, suffix of the dotted name, first key wins, regex syntax allowed."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        rank_pattern={"layer.0.attention.self.query": 8, r"layer\.[01]\..*value": 2},
        alpha_pattern={"query": 2},
    )
    peft = get_peft_model(model, config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)  # PEFT starts B at zero: the scale would not show
    peft.save_pretrained(str(tmp_path))
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    weights = build(base, *parts(files))
    assert weights.lora[QUERY][0].shape[0] == 8
    assert weights.lora["encoder.layer.1.attention.self.query"][0].shape[0] == 4
    assert weights.lora["encoder.layer.1.attention.self.value"][0].shape[0] == 2
    raw = load_st(files[WEIGHTS])
    want = raw[f"base_model.model.bert.{QUERY}.lora_B.weight"] * (2 / 8)  # alpha_pattern / r
    assert torch.allclose(weights.lora[QUERY][1], want)


@pytest.mark.parametrize(
    ("patterns", "fragment"),
    [
        ({"(": 8}, "not a valid regular expression"),
        ({r"(query)\1": 8}, "linear-time"),
        ({"(?<=self.)query": 8}, "linear-time"),
        ({"q" * 300: 8}, "300 characters > limit 256"),
        ({f"m{i}": 8 for i in range(1025)}, "1025 keys > limit 1024"),
    ],
)
def test_invalid_pattern_is_a_400_naming_the_key(
    base: FrozenBase, lora: dict[str, bytes], patterns: dict[str, int], fragment: str
) -> None:
    config, tensors = parts(lora)
    for field in ("rank_pattern", "alpha_pattern"):
        error = refused(base, {**config, field: patterns}, tensors)
        assert error.code == "invalid_config" and error.param == CONFIG
        assert field in error.message and fragment in error.message, error.message


# ---------------------------------------------------------------- 2. non-finite derived values
@pytest.mark.parametrize("alpha", [1e308, MAX_LORA_SCALE * 4 * 2, 10**400])
def test_huge_lora_alpha_is_refused_naming_it(
    base: FrozenBase, lora: dict[str, bytes], alpha: float
) -> None:
    """Every stored weight is finite, but alpha / r folded into B is not (or swamps the base)."""
    config, tensors = parts(lora)
    error = refused(base, {**config, "lora_alpha": alpha}, tensors)
    assert error.param == CONFIG and "lora_alpha" in error.message, error.message


def test_json_infinity_for_alpha_is_refused(base: FrozenBase, lora: dict[str, bytes]) -> None:
    # 1e999 is valid JSON and parses to inf (not a NaN/Infinity literal)
    text = lora[CONFIG].decode().replace('"lora_alpha": 8', '"lora_alpha": 1e999')
    config = parse_json_object(text.encode(), what=CONFIG, param=CONFIG)
    assert config["lora_alpha"] == float("inf")
    error = refused(base, config, parse_safetensors(lora[WEIGHTS]))
    assert error.code == "invalid_adapter_config" and "lora_alpha" in error.message


def test_folded_b_that_overflows_float32_is_refused(
    base: FrozenBase, lora: dict[str, bytes]
) -> None:
    config, tensors = parts(lora)
    tensors[B_KEY] = torch.full_like(tensors[B_KEY], 3e38)  # finite; times alpha / r = 2 is not
    error = refused(base, config, tensors)
    assert error.code == "non_finite_weights" and "lora_alpha" in error.message


def test_values_beyond_float16_are_refused_on_a_float16_base(
    base: FrozenBase,
    lora: dict[str, bytes],
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Finite in float32, inf in the float16 slots the runtime would copy them into."""
    half = make_base(tiny_bert_dir, tokenizer, torch.float16)
    config, tensors = parts(lora)
    tensors[B_KEY] = torch.full_like(tensors[B_KEY], 1e5)
    build(base, config, tensors)  # a float32 runtime holds it
    error = refused(half, config, tensors)
    assert error.code == "non_finite_weights" and "float16" in error.message
    prompt = {
        "prompt_embeddings": torch.full((2, 32), 1e5),
        "classifier.weight": torch.zeros(2, 32),
    }
    prompt_config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2}
    build(base, prompt_config, prompt)
    error = refused(half, prompt_config, prompt)
    assert "prompt_embeddings" in error.message and "float16" in error.message


def test_f64_head_beyond_float32_is_refused(base: FrozenBase) -> None:
    data = save_st({"classifier.weight": torch.full((2, 32), 1e300, dtype=torch.float64)})
    error = refused(base, {"peft_type": "LINEAR_PROBE", "layers": [-1]}, parse_safetensors(data))
    assert error.code == "non_finite_weights" and "classifier.weight" in error.message


# ---------------------------------------------------------------- 3. nesting and text
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"a": ' * 50 + b"1" + b"}" * 50, "invalid_json"),
        (b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "invalid_json"),
        (b'{"peft_type": "LORA", "note": "\\ud800"}', "invalid_text"),
        (b'{"\\udfff": 1}', "invalid_text"),
        (b'{"r": 1, "r": 2}', "invalid_json"),
        (b'{"r": NaN}', "invalid_json"),
        (b"[1]", "invalid_json"),
    ],
)
def test_config_json_is_bounded_and_text(data: bytes, code: str) -> None:
    with pytest.raises(SwitchyardError) as info:
        parse_json_object(data, what=CONFIG, param=CONFIG)
    assert info.value.status == 400 and info.value.code == code


# ---------------------------------------------------------------- 4. order-free decisions
def test_two_heads_are_refused_naming_both(base: FrozenBase) -> None:
    tensors = {"classifier.weight": torch.zeros(2, 32), "score.weight": torch.zeros(2, 7)}
    error = refused(base, {"peft_type": "LINEAR_PROBE", "layers": [-1]}, tensors)
    assert error.code == "invalid_head"
    assert "'classifier.weight'" in error.message and "'score.weight'" in error.message


def test_two_names_for_one_tensor_are_refused(base: FrozenBase) -> None:
    tensors = {
        "classifier.weight": torch.zeros(2, 32),
        "base_model.model.classifier.weight": torch.ones(2, 32),
    }
    error = refused(base, {"peft_type": "LINEAR_PROBE", "layers": [-1]}, tensors)
    assert error.code == "duplicate_tensor"


_SEED_SCRIPT = """
import sys, torch
from transformers import AutoTokenizer, BertModel
from app.base import wrap_base
from app.errors import SwitchyardError
from app.registry.weights import build_weights
folder = sys.argv[1]
base = wrap_base(BertModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                 name="tiny", path=folder, device=torch.device("cpu"))
tensors = {"classifier.weight": torch.zeros(2, 32), "classifier.bias": torch.zeros(2),
           "score.weight": torch.zeros(2, 7), "score.bias": torch.zeros(2)}
try:
    build_weights({"peft_type": "LINEAR_PROBE", "layers": [-1]}, tensors, base,
                  task="classification", labels=["a", "b"], max_rank=8)
    print("accepted")
except SwitchyardError as exc:
    print(exc.code, exc.message)
"""


def test_head_decision_does_not_depend_on_the_hash_seed(tiny_bert_dir: Path) -> None:
    """Before: the head was read from a set, so one hash seed accepted and another refused."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _SEED_SCRIPT, str(tiny_bert_dir)],
            env={**env, "PYTHONHASHSEED": str(seed)},
            text=True,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[3],
        )
        for seed in (0, 1, 2, 3, 4)
    ]
    outcomes = {run.communicate(timeout=120)[0].strip() for run in runs}
    assert len(outcomes) == 1, outcomes
    assert outcomes.pop().startswith("invalid_head")


# ---------------------------------------------------------------- 6. linear_probe in plain PEFT
class ProbeModel(torch.nn.Module):
    """What a probe computes, as a plain module: mean-pooled hidden states of `layers`, a head."""

    def __init__(self, bert: BertModel, layers: list[int], rows: int) -> None:
        super().__init__()
        self.bert, self.layers = bert, layers
        self.classifier = torch.nn.Linear(bert.config.hidden_size * len(layers), rows)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        states = self.bert(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = [(states[i] * mask).sum(1) / mask.sum(1) for i in self.layers]
        return self.classifier(torch.cat(pooled, dim=-1))


def test_linear_probe_download_loads_in_plain_peft(
    client: TestClient, tiny_base: FrozenBase, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    from peft import PeftModel

    layers, texts = [1, -1], ["a fine day", "rain again, all week long"]
    torch.manual_seed(3)
    files = probe_files(
        tiny_base, layers=layers, pooling="mean", weight=torch.randn(2, 64), bias=torch.randn(2)
    )
    data = {"name": "probe", "task": "classification", "labels": json.dumps(LABELS)}
    response = client.post("/v1/adapters", data=data, files=[(k, (k, v)) for k, v in files.items()])
    assert response.status_code == 201, response.text
    assert client.get("/v1/adapters/probe").json()["method"] == "linear_probe"
    served = client.post(
        "/v1/adapters/probe/predict",
        json={"inputs": texts, "parameters": {"top_k": None, "function_to_apply": "none"}},
    ).json()
    download = client.get("/v1/adapters/probe/download")
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(tmp_path)
    bert = BertModel.from_pretrained(tiny_base.path).eval()
    with pytest.warns(UserWarning, match="switchyard_method"):  # PEFT names what it ignores
        peft = PeftModel.from_pretrained(ProbeModel(bert, layers, 2), tmp_path).eval()
    with torch.inference_mode():
        plain = torch.cat([peft(**tokenizer([t], return_tensors="pt")) for t in texts])
    scores = torch.stack([as_vector(o, LABELS) for o in served["outputs"]])
    assert (scores - plain).abs().max() < 1e-4
