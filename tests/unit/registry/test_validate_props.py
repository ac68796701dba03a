"""Property-based tests for the adapter-file parsers: whatever the bytes, the outcome is a parsed
value or a `SwitchyardError` with a 4xx status, never another exception (a 500).

Strategies cover what broke in review (issue 13): arbitrary unicode including lone surrogates,
deep nesting, extreme numbers (1e308, 1e999, -0.0, 10**400), hostile regex keys, and random
safetensors headers (names, dtypes, shapes, offsets, declared lengths).
"""

from __future__ import annotations

import json
import math
import re
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_st
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase, wrap_base
from app.errors import SwitchyardError
from app.registry.patterns import compile_patterns
from app.registry.validate import parse_json_object, parse_safetensors
from app.registry.weights import build_weights

CONFIG = "adapter_config.json"
BOUNDED = settings(
    max_examples=100,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUERY = "bert.encoder.layer.0.attention.self.query"
PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def base(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> FrozenBase:
    model = BertModel.from_pretrained(tiny_bert_dir)
    return wrap_base(model, tokenizer, name="tiny", path=tiny_bert_dir, device=torch.device("cpu"))


def outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The call's result, or its SwitchyardError, which must be a 4xx."""
    try:
        return call(*args, **kwargs)
    except SwitchyardError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code, exc.message)
        assert exc.code and exc.message
        return exc


# ---------------------------------------------------------------- strategies
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
texts = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), surrogates, st.text(max_size=3)),
)
extreme_numbers = st.sampled_from(
    [1e308, -1e308, 1e999, -0.0, 0.0, 5e-324, 10**400, -(10**400), 2**63, 2**64, -1, 0, 1]
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), extreme_numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=20,
)


def encode(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON bytes as a client could send them: NaN/Infinity literals and surrogates included."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def json_documents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["value", "nested", "bytes"]))
    if kind == "value":
        return encode(draw(json_values), ascii_only=draw(st.booleans()))
    if kind == "nested":
        depth = draw(st.integers(1, 5000))
        opener = draw(st.sampled_from(['{"a": ', "[", '{"k": [']))
        closer = {'{"a": ': "}", "[": "]", '{"k": [': "]}"}[opener]
        return (opener * depth + "1" + closer * depth).encode()
    return draw(st.binary(max_size=64))


@BOUNDED
@given(data=json_documents())
def test_parse_json_object_is_a_dict_or_a_4xx(data: bytes) -> None:
    result = outcome(parse_json_object, data, what=CONFIG, param=CONFIG)
    assert isinstance(result, (dict, SwitchyardError))


# ---------------------------------------------------------------- configs on a tiny base
def lora_tensors(rank: int = 4) -> dict[str, torch.Tensor]:
    return {
        f"{PREFIX}{QUERY}.lora_A.weight": torch.randn(rank, 32),
        f"{PREFIX}{QUERY}.lora_B.weight": torch.randn(32, rank),
        f"{PREFIX}classifier.weight": torch.randn(2, 32),
        f"{PREFIX}classifier.bias": torch.randn(2),
    }


CONFIG_KEYS = {
    "peft_type": st.sampled_from(
        ["LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING", "LINEAR_PROBE", "ADALORA"]
    ),
    "r": st.one_of(st.integers(-2, 70), extreme_numbers),
    "lora_alpha": st.one_of(st.floats(), extreme_numbers),
    "use_rslora": st.booleans(),
    "rank_pattern": st.dictionaries(
        st.one_of(texts, st.sampled_from(["query", "([a-z.]+)+Z", "(", r"(q)\1", "layer.0.*"])),
        st.one_of(st.integers(-1, 8), extreme_numbers),
        max_size=3,
    ),
    "alpha_pattern": st.dictionaries(texts, st.one_of(st.floats(), extreme_numbers), max_size=3),
    "layers": st.lists(st.one_of(st.integers(-4, 4), extreme_numbers), max_size=3),
    "pooling": st.one_of(st.sampled_from(["mean", "cls", "max"]), texts),
    "num_virtual_tokens": st.one_of(st.integers(-1, 4), extreme_numbers),
    "switchyard_method": st.sampled_from(["linear_probe", "lora", ""]),
}


@st.composite
def adapter_configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    for key in draw(st.lists(st.sampled_from(sorted(CONFIG_KEYS)), unique=True, max_size=4)):
        config[key] = draw(CONFIG_KEYS[key])
    for key, value in draw(st.dictionaries(texts, json_values, max_size=2)).items():
        config.setdefault(key, value)
    return config


@BOUNDED
@given(config=adapter_configs(), data=st.data())
def test_build_weights_on_any_config_is_weights_or_a_4xx(
    base: FrozenBase, config: dict[str, Any], data: st.DataObject
) -> None:
    raw = encode(config, ascii_only=data.draw(st.booleans()))
    parsed = outcome(parse_json_object, raw, what=CONFIG, param=CONFIG)
    if isinstance(parsed, SwitchyardError):
        return
    tensors = data.draw(st.sampled_from(["lora", "probe", "prompt"]))
    chosen = {
        "lora": lora_tensors(),
        "probe": {"classifier.weight": torch.randn(2, 32)},
        "prompt": {
            "prompt_embeddings": torch.randn(2, 32),
            "classifier.weight": torch.randn(2, 32),
        },
    }[tensors]
    result = outcome(
        build_weights, parsed, chosen, base, task="classification", labels=["a", "b"], max_rank=8
    )
    if not isinstance(result, SwitchyardError):
        for pair in result.lora.values():
            assert all(bool(torch.isfinite(t).all()) for t in pair)


# ---------------------------------------------------------------- safetensors headers
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "f32", ""]
counts = st.one_of(st.integers(0, 40), st.sampled_from([-1, 2**40, 2**64, 1.5, True, "4"]))


@st.composite
def safetensors_blobs(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {}
    position = 0
    for name in draw(st.lists(texts, max_size=4, unique=True)):
        shape = draw(st.lists(counts, max_size=3))
        dtype = draw(st.one_of(st.sampled_from(DTYPES), json_values))
        size = 4 * math.prod(d for d in shape if isinstance(d, int) and 0 <= d < 50)
        begin = draw(st.one_of(st.just(position), counts))
        end = draw(st.one_of(st.just(position + size), counts))
        position += size
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        if draw(st.booleans()):
            entry = draw(st.dictionaries(texts, json_values, max_size=3)) | entry
        header[name] = draw(st.one_of(st.just(entry), json_values))
    if draw(st.booleans()):
        header["__metadata__"] = draw(json_values)
    raw = encode(header, ascii_only=draw(st.booleans()))
    data = draw(st.one_of(st.just(b"\x00" * position), st.binary(max_size=96)))
    length = draw(st.one_of(st.just(len(raw)), st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", length) + raw + data


@BOUNDED
@given(blob=st.one_of(safetensors_blobs(), st.binary(max_size=64)))
def test_parse_safetensors_is_tensors_or_a_4xx(blob: bytes) -> None:
    result = outcome(parse_safetensors, blob)
    if not isinstance(result, SwitchyardError):
        assert all(
            t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            for t in result.values()
        )


tensor_values = st.sampled_from([0.0, -0.0, 1.0, 1e5, 3e38, 1e300, float("inf"), float("nan")])


@BOUNDED
@given(
    rank=st.integers(1, 6),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    value=tensor_values,
    victim=st.sampled_from(sorted(lora_tensors())),
    extra=st.sampled_from(["", "score.weight", "classifier.weight", f"{QUERY}.lora_A.weight"]),
)
def test_real_tensors_with_extreme_values_are_weights_or_a_4xx(
    base: FrozenBase, rank: int, dtype: torch.dtype, value: float, victim: str, extra: str
) -> None:
    """Bytes made by the safetensors library itself, then both parsers in order, as uploads do."""
    tensors = lora_tensors(rank)
    tensors[victim] = tensors[victim].to(dtype)
    # 1e300 becomes inf in the narrower dtypes, as it would in a real file
    tensors[victim].view(-1)[0] = torch.tensor(value, dtype=torch.float64).to(dtype)
    if extra:
        tensors[extra] = torch.zeros(2, 32)
    parsed = outcome(parse_safetensors, save_st(tensors))
    if isinstance(parsed, SwitchyardError):
        return
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank}
    outcome(
        build_weights, config, parsed, base, task="classification", labels=["a", "b"], max_rank=8
    )


# ---------------------------------------------------------------- RE2 answers as PEFT's re does
MODULES = ["encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense", "pooler.dense"]
key_parts = st.sampled_from(
    [
        "query",
        "dense",
        "layer",
        ".",
        r"\.",
        "0",
        "1",
        "[01]",
        "(",
        ")",
        "|",
        "*",
        "+",
        "?",
        ".*",
        "self",
        "^",
        "$",
        "output",
    ]
)


@BOUNDED
@given(key=st.lists(key_parts, min_size=1, max_size=6).map("".join))
def test_re2_matches_what_python_re_matches(key: str) -> None:
    """Short keys (no blow-up in Python here): where both engines take a key, they agree."""
    compiled = outcome(compile_patterns, "rank_pattern", {key: 2})
    if isinstance(compiled, SwitchyardError):
        assert compiled.code == "invalid_config" and "rank_pattern" in compiled.message
        return
    for module in MODULES:
        peft = re.match(rf"(.*\.)?({key})$", module) is not None
        assert (compiled.value_for(module, 1) == 2) == peft, (key, module)
