"""The linear_probe plug-in: its files (a LoRA in PEFT's clothes, or the older LINEAR_PROBE
config) parsed as a head over pooled layers, and served as that head over the frozen base."""

from __future__ import annotations

import json

import torch
from fastapi.testclient import TestClient

from app.base import FrozenBase
from app.methods import METHODS, method_of_files
from app.registry.probe_format import probe_files
from tests.unit.methods.plugin_helpers import LABELS, TEXTS, parse, parts, refusal, served_raw

LAYERS = [-1, 1]


def probe(base: FrozenBase, seed: int = 0) -> dict[str, bytes]:
    torch.manual_seed(seed)
    width = len(LAYERS) * base.hidden_size
    return probe_files(
        base, layers=LAYERS, pooling="mean",
        weight=torch.randn(len(LABELS), width), bias=torch.randn(len(LABELS)),
    )  # fmt: skip


def test_probe_files_parse_as_a_head_over_pooled_layers(tiny_base: FrozenBase) -> None:
    config, tensors = parts(probe(tiny_base))
    assert method_of_files(config) is METHODS["linear_probe"]
    weights = parse(tiny_base, config, tensors)
    assert weights.method == "linear_probe" and weights.probe_layers == LAYERS
    assert not weights.lora and weights.head["weight"].shape[1] == 2 * tiny_base.hidden_size


def test_older_probe_config_still_parses(tiny_base: FrozenBase) -> None:
    config, tensors = parts(probe(tiny_base))
    old = {"peft_type": "LINEAR_PROBE", "layers": LAYERS, "pooling": "mean"}
    head = {k: v for k, v in tensors.items() if "classifier" in k}
    assert parse(tiny_base, old, head).probe_layers == LAYERS
    assert config["switchyard_method"] == "linear_probe"


def test_probe_refuses_a_lora_pair_that_is_not_zero(tiny_base: FrozenBase) -> None:
    config, tensors = parts(probe(tiny_base))
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key] = torch.ones_like(tensors[key])
    assert refusal(tiny_base, config, tensors) == "unknown_tensor"


def test_probe_served_equals_its_head_over_mean_pooled_layers(
    client: TestClient, tiny_base: FrozenBase
) -> None:
    files = probe(tiny_base)
    _config, tensors = parts(files)
    served = served_raw(client, "pr", files)
    weight = next(v for k, v in tensors.items() if k.endswith("classifier.weight"))
    bias = next(v for k, v in tensors.items() if k.endswith("classifier.bias"))
    for text, got in zip(TEXTS, served, strict=True):
        batch = tiny_base.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            states = tiny_base.model(**batch, output_hidden_states=True).hidden_states
        pooled = torch.cat([states[layer][0].mean(dim=0) for layer in LAYERS])
        assert (got - (pooled @ weight.t() + bias)).abs().max() < 1e-5
    assert json.loads(files["adapter_config.json"])["layers"] == LAYERS
