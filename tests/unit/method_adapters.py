"""Adapters of every method made with plain PEFT on the tiny BERT, and what they compute.

PEFT is the reference for LoRA, IA3 and prompt tuning. For prefix tuning it is not: PEFT builds
and saves a PREFIX_TUNING adapter for BERT, but its forward raises "Model does not support past
key values" under transformers 5 (BERT's attention no longer takes `past_key_values`). The
prefix reference is therefore written out here by hand, one row at a time, with PEFT's rules
for a prefix on an encoder: every layer attends to [prefix keys; token keys], and the tokens'
positions start after the prefix (PEFT offsets position ids by num_virtual_tokens).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertModel,
    PreTrainedTokenizerBase,
)
from transformers.models.bert.modeling_bert import BertLayer

from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore
from app.registry.weights import _normalise_key
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime

SEQ, TOKEN = "classification", "token_classification"


def make_runtime(base: FrozenBase, settings: Settings) -> tuple[Runtime, Registry]:
    """A serving runtime over the tiny base and an empty registry."""
    registry = Registry(AdapterStore(settings.store), base, settings)
    return Runtime(base, registry, settings, Metrics()), registry


def peft_files(
    base_dir: Path, out: Path, *, method: str, task: str, labels: int, seed: int, virtual: int = 4
) -> Path:
    """Build an adapter with plain PEFT, give it random non-trivial weights, save it."""
    torch.manual_seed(seed)
    cls = AutoModelForTokenClassification if task == TOKEN else AutoModelForSequenceClassification
    model = cls.from_pretrained(base_dir, num_labels=labels)
    task_type = TaskType.TOKEN_CLS if task == TOKEN else TaskType.SEQ_CLS
    config: Any = {
        # all-linear would take a token classifier for a body layer: name the modules instead
        "lora": lambda: LoraConfig(
            task_type=task_type,
            r=4,
            lora_alpha=8,
            target_modules=["query", "key", "value", "dense"],
        ),
        "ia3": lambda: IA3Config(task_type=task_type),
        "prompt": lambda: PromptTuningConfig(task_type=task_type, num_virtual_tokens=virtual),
        "prefix": lambda: PrefixTuningConfig(task_type=task_type, num_virtual_tokens=virtual),
    }[method]()
    peft = get_peft_model(model, config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
        elif "ia3_l" in name:
            param.data.uniform_(0.5, 1.5)
        elif "prompt_encoder" in name:
            param.data.normal_(0, 0.5)
    peft.save_pretrained(out)
    return out


def register(
    registry: Registry,
    name: str,
    folder: Path,
    *,
    task: str,
    labels: list[str],
    meta: dict[str, Any] | None = None,
) -> None:
    """Store a PEFT folder as the next version of `name` (`meta`: its switchyard.json keys)."""
    files = {file: (folder / file).read_bytes() for file in (CONFIG_FILE, WEIGHTS_FILE)}
    register_files(registry, name, files, task=task, labels=labels, meta=meta)


def register_files(
    registry: Registry,
    name: str,
    files: dict[str, bytes],
    *,
    task: str,
    labels: list[str],
    meta: dict[str, Any] | None = None,
) -> int:
    """Store PEFT files (a trained outcome's) as the next version of `name`; its number."""
    return registry.register(
        name,
        config_bytes=files[CONFIG_FILE],
        weights_bytes=files[WEIGHTS_FILE],
        task=task,
        labels=labels,
        meta=meta,
    )


def peft_logits(
    base_dir: Path,
    folder: Path,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[Any],
    *,
    task: str,
    labels: int,
    virtual: int = 0,
) -> list[torch.Tensor]:
    """Plain PEFT, one row at a time; token logits without the virtual positions."""
    cls = AutoModelForTokenClassification if task == TOKEN else AutoModelForSequenceClassification
    model = PeftModel.from_pretrained(
        cls.from_pretrained(base_dir, num_labels=labels), folder
    ).eval()
    pooled = "pooling" in json.loads((folder / CONFIG_FILE).read_text())
    out = []
    with torch.inference_mode():
        for item in inputs:
            batch = tokenizer(*_text(item), return_tensors="pt")
            logits = (mean_pooled_logits(model, batch) if pooled else model(**batch).logits)[0]
            out.append(logits[virtual:] if task == TOKEN else logits)
    return out


def mean_pooled_logits(model: PeftModel, batch: Any) -> torch.Tensor:
    """What a pooled-head adapter computes (its config has `pooling`): plain PEFT's model,
    its head applied to the attention-masked mean of the last hidden states."""
    view: Any = model.base_model.model
    backbone = getattr(view, view.base_model_prefix)
    hidden = backbone(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    result: torch.Tensor = view.classifier(pooled)
    return result


def prefix_logits(
    base_dir: Path,
    folder: Path,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[Any],
    *,
    task: str,
) -> list[torch.Tensor]:
    """The prefix reference (see the module docstring), with an unpatched fresh BERT."""
    bert = BertModel.from_pretrained(base_dir).eval()
    config = bert.config
    tensors = {_normalise_key(k): v for k, v in load_file(folder / WEIGHTS_FILE).items()}
    heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    virtual = tensors["prompt_embeddings"].shape[0]
    grid = tensors["prompt_embeddings"].view(virtual, config.num_hidden_layers, 2, heads, dim)
    out = []
    with torch.inference_mode():
        for item in inputs:
            enc = tokenizer(*_text(item), return_tensors="pt")
            hidden = _prefix_encoder(bert, grid, enc["input_ids"], enc["token_type_ids"])
            features = hidden[0] if task == TOKEN else bert.pooler(hidden)[0]
            out.append(features @ tensors["classifier.weight"].t() + tensors["classifier.bias"])
    return out


def _prefix_encoder(
    bert: BertModel, grid: torch.Tensor, ids: torch.Tensor, types: torch.Tensor
) -> torch.Tensor:
    virtual, tokens = grid.shape[0], ids.shape[1]
    positions = torch.arange(tokens)[None] + virtual
    hidden = bert.embeddings(input_ids=ids, token_type_ids=types, position_ids=positions)
    # nn.ModuleList yields plain Modules to mypy; BERT's encoder holds BertLayers.
    for index, layer in enumerate(cast(list[BertLayer], bert.encoder.layer)):
        attention = layer.attention.self
        heads, dim = grid.shape[3], grid.shape[4]

        def split(x: torch.Tensor, heads: int = heads, dim: int = dim) -> torch.Tensor:
            return x.view(1, -1, heads, dim).transpose(1, 2)

        query = split(attention.query(hidden))
        key = torch.cat([grid[None, :, index, 0].transpose(1, 2), split(attention.key(hidden))], 2)
        value = torch.cat(
            [grid[None, :, index, 1].transpose(1, 2), split(attention.value(hidden))], 2
        )
        weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(dim), dim=-1)
        context = (weights @ value).transpose(1, 2).reshape(1, tokens, -1)
        attended = layer.attention.output(context, hidden)
        hidden = layer.output(layer.intermediate(attended), attended)
    return hidden


def _text(item: Any) -> tuple[str, str | None]:
    return (item, None) if isinstance(item, str) else (item["text"], item.get("text_pair"))
