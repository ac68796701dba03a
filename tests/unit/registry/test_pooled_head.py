"""LoRA and IA3 adapters whose head reads pooled hidden states (`layers`, `pooling` in the config).

The reference is plain PEFT over a hand-written module that pools the BERT's hidden states and
applies a linear head, as `ProbeModel` in test_weights.py does for probes: what a user who made
such an adapter outside the service would run.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load as load_st
from torch import nn
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase, wrap_base
from app.config import Settings
from app.errors import SwitchyardError
from app.registry.probe_format import probe_files
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.registry.weights import build_weights
from app.runtime.engine import EncodeRequest
from app.tasks import EMBEDDINGS
from tests.conftest import peft_adapter, upload
from tests.unit.method_adapters import make_runtime, peft_files, peft_logits, register
from tests.unit.peft_reference import as_vector

LABELS = ["l0", "l1", "l2"]
TEXTS: list[Any] = [
    "a gripping, beautiful film",
    "meh",
    {"text": "the plot falls apart", "text_pair": "but the actors shine"},
    "an unexpectedly long sentence about nothing in particular at all",
]
RAW = {"top_k": None, "function_to_apply": "none"}


class PooledModel(nn.Module):
    """A BERT whose head reads `pooling` of the hidden states of `layers`, concatenated."""

    def __init__(self, bert: BertModel, layers: list[int], pooling: str, rows: int) -> None:
        super().__init__()
        self.bert, self.layers, self.pooling = bert, layers, pooling
        self.classifier = nn.Linear(bert.config.hidden_size * len(layers), rows)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        states = self.bert(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return self.classifier(torch.cat([self._pool(states[i], mask) for i in self.layers], -1))

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":
            return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        return (hidden * mask).sum(1) / mask.sum(1)


def pooled_files(
    base_dir: Path, out: Path, *, method: str, layers: list[int], pooling: str, seed: int
) -> Path:
    """A pooled-head adapter made with plain PEFT (random non-trivial weights), plus the keys."""
    torch.manual_seed(seed)
    model = PooledModel(BertModel.from_pretrained(base_dir), layers, pooling, len(LABELS))
    config: Any = (
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
        )
        if method == "lora"
        else IA3Config(
            target_modules=["key", "value", "intermediate.dense"],
            feedforward_modules=["intermediate.dense"],
            modules_to_save=["classifier"],
        )
    )
    peft = get_peft_model(model, config)
    for name, param in peft.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            param.data.normal_(0, 0.3)
        elif "ia3_l" in name:
            param.data.uniform_(0.5, 1.5)
    peft.save_pretrained(str(out))
    saved = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps({**saved, "layers": layers, "pooling": pooling}))
    return out


def reference(
    base_dir: Path,
    folder: Path,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[Any],
    *,
    layers: list[int],
    pooling: str,
) -> list[torch.Tensor]:
    """Plain PEFT over `PooledModel`, one row at a time."""
    bert = BertModel.from_pretrained(base_dir).eval()
    model = PeftModel.from_pretrained(PooledModel(bert, layers, pooling, len(LABELS)), folder)
    out = []
    with torch.inference_mode():
        for item in inputs:
            text = (item, None) if isinstance(item, str) else (item["text"], item["text_pair"])
            out.append(model.eval()(**tokenizer(*text, return_tensors="pt"))[0])
    return out


# ---------------------------------------------------------------- served equals plain PEFT
@pytest.mark.parametrize(
    ("method", "layers", "pooling"), [("lora", [-1], "mean"), ("ia3", [1, -1], "max")]
)
def test_uploaded_pooled_adapter_serves_what_plain_peft_computes(
    client: TestClient,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
    method: str,
    layers: list[int],
    pooling: str,
) -> None:
    folder = pooled_files(
        tiny_bert_dir, tmp_path / "a", method=method, layers=layers, pooling=pooling, seed=1
    )
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"}
    response = upload(client, "pooled", files, labels=LABELS)
    assert response.status_code == 201, response.text
    assert client.get("/v1/adapters/pooled").json()["method"] == method
    served = client.post(
        "/v1/adapters/pooled/predict", json={"inputs": TEXTS, "parameters": RAW}
    ).json()
    scores = torch.stack([as_vector(o, LABELS) for o in served["outputs"]])
    plain = torch.stack(
        reference(tiny_bert_dir, folder, tokenizer, TEXTS, layers=layers, pooling=pooling)
    )
    assert (scores - plain).abs().max() < 1e-4
    # the download still names its read-out, and loads in plain PEFT as it did before upload
    download = client.get("/v1/adapters/pooled/download")
    zipfile.ZipFile(io.BytesIO(download.content)).extractall(tmp_path / "down")
    config = json.loads((tmp_path / "down" / CONFIG_FILE).read_text())
    assert (config["layers"], config["pooling"]) == (layers, pooling)
    again = reference(
        tiny_bert_dir, tmp_path / "down", tokenizer, TEXTS, layers=layers, pooling=pooling
    )
    assert (torch.stack(again) - plain).abs().max() < 1e-6


# ---------------------------------------------------------------- one forward, own answers
def test_pooled_and_plain_adapters_in_one_forward_each_get_their_own_answer(
    tiny_base: FrozenBase,
    settings: Settings,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    runtime, registry = make_runtime(tiny_base, settings)
    engine = runtime.encoder
    pooled = {"mean": ("lora", [-1], "mean"), "cls": ("lora", [0, -1], "cls")}
    pooled["ia3"] = ("ia3", [-1], "mean")
    folders = {}
    for n, (name, (method, layers, pooling)) in enumerate(pooled.items()):
        folders[name] = pooled_files(
            tiny_bert_dir, tmp_path / name, method=method, layers=layers, pooling=pooling, seed=n
        )
        register(registry, name, folders[name], task="classification", labels=LABELS)
    plain = peft_files(
        tiny_bert_dir, tmp_path / "plain", method="lora", task="classification", labels=3, seed=7
    )
    register(registry, "plain", plain, task="classification", labels=LABELS)
    torch.manual_seed(8)
    probe = probe_files(
        tiny_base, layers=[1], pooling="mean", weight=torch.randn(3, 32), bias=torch.randn(3)
    )
    registry.register(
        "probe",
        config_bytes=probe[CONFIG_FILE],
        weights_bytes=probe[WEIGHTS_FILE],
        task="classification",
        labels=LABELS,
    )
    names = [*pooled, "plain", "probe"]
    jobs = [
        EncodeRequest(
            key=AdapterRef(n, 1),
            task="classification",
            rows=engine.prepare(TEXTS, task="classification"),
            raw=True,
        )
        for n in names
    ]
    jobs.append(
        EncodeRequest(key=None, task=EMBEDDINGS, rows=engine.prepare(TEXTS, task="classification"))
    )
    calls: list[int] = []
    runtime.base.model.register_forward_hook(lambda *_a: calls.append(1))
    results = engine.run(jobs)
    assert len(calls) == 1 and all(r.error is None for r in results)
    for name, result in zip(names, results, strict=False):
        if name in pooled:
            _m, layers, pooling = pooled[name]
            expected = reference(
                tiny_bert_dir, folders[name], tokenizer, TEXTS, layers=layers, pooling=pooling
            )
        elif name == "plain":
            expected = peft_logits(
                tiny_bert_dir, plain, tokenizer, TEXTS, task="classification", labels=3
            )
        else:
            expected = probe_reference(tiny_bert_dir, probe, tokenizer)
        got = torch.stack(result.outputs or [])
        assert (got - torch.stack(expected)).abs().max() < 1e-4, name
    alone = engine.run([jobs[-1]])[0].outputs or []
    assert torch.allclose(torch.tensor(results[-1].outputs), torch.tensor(alone), atol=1e-5)


def probe_reference(
    base_dir: Path, files: dict[str, bytes], tokenizer: PreTrainedTokenizerBase
) -> list[torch.Tensor]:
    tensors = load_st(files[WEIGHTS_FILE])
    model = PooledModel(BertModel.from_pretrained(base_dir).eval(), [1], "mean", len(LABELS))
    model.classifier.weight.data = tensors["base_model.model.classifier.weight"]
    model.classifier.bias.data = tensors["base_model.model.classifier.bias"]
    out = []
    with torch.inference_mode():
        for item in TEXTS:
            text = (item, None) if isinstance(item, str) else (item["text"], item["text_pair"])
            out.append(model(**tokenizer(*text, return_tensors="pt"))[0])
    return out


# ---------------------------------------------------------------- the keys, checked
@pytest.fixture(scope="module")
def base(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> FrozenBase:
    model = BertModel.from_pretrained(tiny_bert_dir)
    return wrap_base(model, tokenizer, name="tiny", path=tiny_bert_dir, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def lora(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    files = peft_adapter(tiny_bert_dir, num_labels=3, out=tmp_path_factory.mktemp("lora"))
    return {"config": json.loads(files[CONFIG_FILE]), "tensors": dict(load_st(files[WEIGHTS_FILE]))}


def build(base: FrozenBase, lora: dict[str, Any], task: str = "classification", **keys: Any) -> Any:
    labels = [] if task == "regression" else LABELS
    tensors = dict(lora["tensors"])
    if task == "regression":
        tensors = {k: v[:1] if "classifier" in k else v for k, v in tensors.items()}
    return build_weights(
        {**lora["config"], **keys}, tensors, base, task=task, labels=labels, max_rank=64
    )


def test_a_config_without_the_keys_reads_the_pooler_as_before(
    base: FrozenBase, lora: dict[str, Any]
) -> None:
    weights = build(base, lora)
    assert weights.probe_layers == [] and weights.method == "lora"
    pooled = build(base, lora, pooling="mean")
    assert pooled.probe_layers == [-1] and pooled.pooling == "mean"
    assert torch.equal(weights.head["weight"], pooled.head["weight"])
    assert build(base, lora, "regression", layers=[2], pooling="cls").probe_layers == [2]


HOSTILE = {
    "pooling-unknown": ({"pooling": "median"}, "invalid_adapter_config", "pooling"),
    "pooling-null": ({"pooling": None}, "invalid_adapter_config", "pooling"),
    "pooling-list": ({"pooling": ["mean"]}, "invalid_adapter_config", "pooling"),
    "layers-empty": ({"layers": []}, "invalid_adapter_config", "layers"),
    "layers-string": ({"layers": "-1"}, "invalid_adapter_config", "layers"),
    "layers-bool": ({"layers": [True]}, "invalid_adapter_config", "layers"),
    "layers-float": ({"layers": [-1.0]}, "invalid_adapter_config", "layers"),
    "layers-nested": ({"layers": [[-1]]}, "invalid_adapter_config", "layers"),
    "layers-huge": ({"layers": [10**30]}, "invalid_layer", "layers"),
    "layers-past-the-end": ({"layers": [3]}, "invalid_layer", "layers"),
    "layers-before-the-start": ({"layers": [-4]}, "invalid_layer", "layers"),
    "layers-too-many": ({"layers": [-1] * 65}, "invalid_adapter_config", "layers"),
    # two layers concatenated need a head twice as wide as this one
    "layers-wider-than-head": ({"layers": [-1, -2]}, "shape_mismatch", WEIGHTS_FILE),
}


@pytest.mark.parametrize("case", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_keys_are_a_400_naming_the_key(
    base: FrozenBase, lora: dict[str, Any], case: tuple[dict[str, Any], str, str]
) -> None:
    keys, code, param = case
    with pytest.raises(SwitchyardError) as caught:
        build(base, lora, **keys)
    error = caught.value
    assert (error.status, error.code, error.param) == (400, code, param), error.message
    if code == "invalid_adapter_config":
        assert repr(param) in error.message  # names the key


def test_token_classification_refuses_the_keys(
    base: FrozenBase, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    files = peft_adapter(
        tiny_bert_dir, num_labels=3, task="token", target_modules=["query"], out=tmp_path
    )
    config = {**json.loads(files[CONFIG_FILE]), "layers": [-1]}
    with pytest.raises(SwitchyardError) as caught:
        build_weights(
            config,
            dict(load_st(files[WEIGHTS_FILE])),
            base,
            task="token_classification",
            labels=LABELS,
            max_rank=64,
        )
    error = caught.value
    assert (error.code, error.param) == ("unsupported_task", "layers")
    assert "token_classification" in error.message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)
LAYERS = st.lists(st.integers(-6, 6), min_size=0, max_size=3) | JSON
POOLING = st.sampled_from(["mean", "cls", "max", "MEAN", ""]) | JSON


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layers=LAYERS, pooling=POOLING, which=st.sampled_from(["both", "layers", "pooling"]))
def test_any_keys_are_served_as_written_or_a_400(
    base: FrozenBase, lora: dict[str, Any], layers: Any, pooling: Any, which: str
) -> None:
    keys = {"layers": layers, "pooling": pooling}
    keys = keys if which == "both" else {which: keys[which]}
    valid_layers = (
        isinstance(layers, list)
        and len(layers) == 1  # the head is one layer wide
        and all(type(x) is int and -3 <= x <= 2 for x in layers)
    )
    valid = (which == "pooling" or valid_layers) and (
        which == "layers" or pooling in ("mean", "cls", "max")
    )
    try:
        weights = build(base, lora, **keys)
    except SwitchyardError as exc:
        assert not valid and exc.status == 400
        assert exc.param in ("layers", "pooling", WEIGHTS_FILE)
        return
    assert valid
    assert weights.probe_layers == keys.get("layers", [-1])
    assert weights.pooling == keys.get("pooling", "mean")
