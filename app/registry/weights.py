"""Turn checked adapter files into `AdapterWeights`: what the runtime copies into a slot.

The same function runs on upload (so a bad adapter is refused before it is stored) and when
the runtime loads a stored version (so a file corrupted on disk fails only its own requests).
Every tensor name must map to a module of this base, with the shape that module needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.base import FrozenBase
from app.errors import bad_request
from app.registry.finite import as_float32, fold_lora_scale
from app.registry.heads import HEAD_MODULES, check_head, normalise_key, normalised, split_head
from app.registry.patterns import compile_patterns
from app.registry.pooled_head import check_layers, has_pooled_head, parse_pooled_head
from app.registry.probe_format import ProbeSpec, check_probe_body, is_probe_in_lora
from app.tasks import TASKS

Method = Literal["lora", "prefix", "prompt", "ia3", "linear_probe"]
PEFT_TYPES: dict[str, Method] = {
    "LORA": "lora",
    "PREFIX_TUNING": "prefix",
    "PROMPT_TUNING": "prompt",
    "IA3": "ia3",
    "LINEAR_PROBE": "linear_probe",
}
# Older callers (tests/unit/method_adapters.py) import the key rule from here.
_normalise_key = normalise_key
_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"


# A LoRA scale: finite and positive (JSON's 1e999 parses to inf, and 10**400 has no float).
Alpha = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Rank = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    # PEFT adds fields every release, so unknown keys pass; the ones we act on are strict.
    model_config = ConfigDict(extra="allow", strict=True)


class LoraConfigSpec(_Strict):
    peft_type: Literal["LORA"]
    r: int = Field(ge=1)
    lora_alpha: Alpha
    use_rslora: bool = False
    use_dora: Literal[False] = False
    fan_in_fan_out: Literal[False] = False
    bias: Literal["none"] = "none"
    rank_pattern: dict[str, Rank] = Field(default_factory=dict)
    alpha_pattern: dict[str, Alpha] = Field(default_factory=dict)
    layer_replication: None = None


class PrefixConfigSpec(_Strict):
    peft_type: Literal["PREFIX_TUNING"]
    num_virtual_tokens: int = Field(ge=1, le=1024)
    prefix_projection: Literal[False] = False


class PromptConfigSpec(_Strict):
    peft_type: Literal["PROMPT_TUNING"]
    num_virtual_tokens: int = Field(ge=1, le=1024)


class IA3ConfigSpec(_Strict):
    peft_type: Literal["IA3"]
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: Literal[False] = False


class ProbeConfigSpec(ProbeSpec):
    # How probes were stored before they loaded in PEFT (see app.registry.probe_format).
    peft_type: Literal["LINEAR_PROBE"]


@dataclass
class AdapterWeights:
    """A parsed adapter, ready to copy into a runtime slot."""

    method: Method
    task: str
    labels: list[str]
    # module path inside the backbone -> (A [r, in], B [out, r] with the LoRA scale folded in)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    # IA3: module path -> scaling vector; input-side ([in]) for feed-forward modules, else [out]
    ia3: dict[str, torch.Tensor] = field(default_factory=dict)
    ia3_input_side: set[str] = field(default_factory=set)
    # prompt tuning: [virtual tokens, hidden] input embeddings prepended to each row
    prompt: torch.Tensor | None = None
    # prefix tuning: per layer (key, value), each [kv_heads, virtual tokens, head_dim]
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # Set (probes, and LoRA/IA3 with a pooled head): the head reads these hidden states,
    # pooled and concatenated, instead of the pooler (app/registry/pooled_head.py).
    probe_layers: list[int] = field(default_factory=list)
    pooling: str = "mean"
    rank: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = [t for pair in self.lora.values() for t in pair] + list(self.head.values())
        tensors += list(self.ia3.values()) + [t for kv in self.prefix for t in kv]
        tensors += [self.prompt] if self.prompt is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)


def build_weights(
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    base: FrozenBase,
    *,
    task: str,
    labels: list[str],
    max_rank: int,
) -> AdapterWeights:
    """Check config and tensors against the base and the task; raise a 400 naming the problem."""
    if task not in TASKS:
        raise bad_request(
            "invalid_task", f"task {task!r} is not one of {sorted(TASKS)}", param="task"
        )
    peft_type = config.get("peft_type")
    method = "linear_probe" if is_probe_in_lora(config) else PEFT_TYPES.get(str(peft_type))
    if method is None:
        raise bad_request(
            "unsupported_method",
            f"peft_type {str(peft_type)[:40]!r} is not one of {sorted(PEFT_TYPES)}",
            param=_CONFIG,
        )
    tensors = normalised(tensors)
    head_module, head = split_head(tensors)
    body = {k: v for k, v in tensors.items() if k.split(".")[0] not in HEAD_MODULES}
    weights = AdapterWeights(method=method, task=task, labels=labels, config=config)
    runtime = base.dtype
    in_features = base.hidden_size
    if method == "lora":
        _parse_lora(_spec(LoraConfigSpec, config), body, base, weights, max_rank=max_rank)
    elif method == "linear_probe":
        in_features *= _parse_probe(_probe_spec(config), body, base, weights)
    elif method == "ia3":
        _parse_ia3(_spec(IA3ConfigSpec, config), body, base, weights)
    elif method == "prompt":
        spec = _spec(PromptConfigSpec, config)
        prompt = _virtual(body, spec.num_virtual_tokens, base.hidden_size)
        weights.prompt = as_float32(
            prompt, runtime_dtype=runtime, what="prompt_embeddings", param=_WEIGHTS
        )
    else:
        spec = _spec(PrefixConfigSpec, config)
        weights.prefix = _parse_prefix(spec, body, base)
    in_features *= _pooled_width(config, base, weights)
    weights.head = check_head(
        head, module=head_module, task=task, labels=labels, in_features=in_features
    )
    return weights


def _probe_spec(config: dict[str, Any]) -> ProbeSpec:
    spec: ProbeSpec = _spec(ProbeSpec if is_probe_in_lora(config) else ProbeConfigSpec, config)
    return spec


def _spec(model: type[BaseModel], config: dict[str, Any]) -> Any:
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise bad_request(
            "invalid_adapter_config",
            f"adapter_config.json field {where!r}: {first['msg']}",
            param=_CONFIG,
        ) from exc


def _parse_lora(
    spec: LoraConfigSpec,
    body: dict[str, torch.Tensor],
    base: FrozenBase,
    weights: AdapterWeights,
    *,
    max_rank: int,
) -> None:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in body.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
        if match is None:
            raise bad_request(
                "unknown_tensor",
                f"tensor {key!r} is not a LoRA weight of a linear layer",
                param=_WEIGHTS,
            )
        pairs.setdefault(match[1], {})[match[2]] = tensor
    if not pairs:
        raise bad_request("empty_adapter", "the adapter holds no LoRA weights", param=_WEIGHTS)
    ranks = compile_patterns("rank_pattern", spec.rank_pattern)
    alphas = compile_patterns("alpha_pattern", spec.alpha_pattern)
    for module_key, ab in sorted(pairs.items()):
        path = _module_path(base, module_key, weights.lora)
        if path not in base.linear_shapes:
            raise bad_request(
                "unknown_module",
                f"tensor {module_key!r} targets {path!r}, which is not a linear layer of base "
                f"{base.name}",
                param=_WEIGHTS,
            )
        if set(ab) != {"A", "B"}:
            raise bad_request(
                "incomplete_lora", f"module {module_key!r} lacks lora_A or lora_B", param=_WEIGHTS
            )
        rank = int(ranks.value_for(path, spec.r))
        alpha = float(alphas.value_for(path, spec.lora_alpha))
        weights.lora[path] = _lora_pair(
            spec, path, ab, base, rank=rank, alpha=alpha, max_rank=max_rank
        )
        weights.rank = max(weights.rank, ab["A"].shape[0])


def _module_path(base: FrozenBase, key: str, seen: dict[str, Any]) -> str:
    """The backbone path `key` targets; a second key for one path is refused, naming it."""
    path = base.module_path(key)
    if path in seen:
        raise bad_request(
            "duplicate_tensor", f"two tensor groups target module {path!r}", param=_WEIGHTS
        )
    return path


def _lora_pair(
    spec: LoraConfigSpec,
    path: str,
    ab: dict[str, torch.Tensor],
    base: FrozenBase,
    *,
    rank: int,
    alpha: float,
    max_rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = ab["A"], ab["B"]
    d_in, d_out = base.linear_shapes[path]
    if rank > max_rank:
        raise bad_request(
            "rank_too_large", f"rank {rank} of {path!r} > max_rank {max_rank}", param="r"
        )
    if (
        a.dim() != 2
        or b.dim() != 2
        or tuple(a.shape) != (rank, d_in)
        or tuple(b.shape)
        != (
            d_out,
            rank,
        )
    ):
        raise bad_request(
            "shape_mismatch",
            f"LoRA of {path!r} has A {tuple(a.shape)} and B {tuple(b.shape)}; this base needs "
            f"A ({rank}, {d_in}) and B ({d_out}, {rank})",
            param=_WEIGHTS,
        )
    scale = alpha / math.sqrt(rank) if spec.use_rslora else alpha / rank
    runtime = base.dtype
    a32 = as_float32(a, runtime_dtype=runtime, what=f"lora_A of {path!r}", param=_WEIGHTS)
    b32 = fold_lora_scale(
        b, scale, runtime_dtype=runtime, what=f"lora_B of {path!r}", config_param=_CONFIG
    )
    return a32, b32


def _parse_probe(
    spec: ProbeSpec, body: dict[str, torch.Tensor], base: FrozenBase, weights: AdapterWeights
) -> int:
    """Check a probe's layers; returns how many layers its head concatenates."""
    check_probe_body(body)
    return _read_pooled(spec, base, weights)


def _pooled_width(config: dict[str, Any], base: FrozenBase, weights: AdapterWeights) -> int:
    """A LoRA/IA3 head over pooled hidden states (app/registry/pooled_head.py): how many
    layers it concatenates; 1 for every other adapter (probes are read by `_parse_probe`)."""
    if weights.method == "linear_probe" or not has_pooled_head(config):
        return 1
    spec = parse_pooled_head(config, method=weights.method, task=weights.task)
    return _read_pooled(spec, base, weights)


def _read_pooled(spec: ProbeSpec, base: FrozenBase, weights: AdapterWeights) -> int:
    """Where the head reads (a probe's, or a pooled LoRA/IA3's); how many layers it
    concatenates."""
    check_layers(spec.layers, base)
    weights.probe_layers = list(spec.layers)
    weights.pooling = spec.pooling
    return len(spec.layers)


def _virtual(body: dict[str, torch.Tensor], tokens: int, width: int) -> torch.Tensor:
    """The one `prompt_embeddings` tensor of a prompt-learning adapter, shape-checked."""
    extra = sorted(set(body) - {"prompt_embeddings"})
    if extra or "prompt_embeddings" not in body:
        raise bad_request(
            "unknown_tensor",
            f"a prompt-learning adapter holds prompt_embeddings only; found {sorted(body)[:5]}",
            param=_WEIGHTS,
        )
    emb = body["prompt_embeddings"]
    if tuple(emb.shape) != (tokens, width):
        raise bad_request(
            "shape_mismatch",
            f"prompt_embeddings {tuple(emb.shape)} != ({tokens}, {width}) for this base",
            param=_WEIGHTS,
        )
    return emb


def _parse_prefix(
    spec: PrefixConfigSpec, body: dict[str, torch.Tensor], base: FrozenBase
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's layout: [virtual, layers * 2 * kv_dim], key then value for each layer."""
    cfg = base.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    layers = base.num_layers
    emb = as_float32(
        _virtual(body, spec.num_virtual_tokens, layers * 2 * heads * head_dim),
        runtime_dtype=base.dtype,
        what="prompt_embeddings (prefix keys and values)",
        param=_WEIGHTS,
    )
    grid = emb.view(spec.num_virtual_tokens, layers * 2, heads, head_dim).permute(1, 2, 0, 3)
    return [(grid[2 * i].contiguous(), grid[2 * i + 1].contiguous()) for i in range(layers)]


def _parse_ia3(
    _spec_: IA3ConfigSpec, body: dict[str, torch.Tensor], base: FrozenBase, weights: AdapterWeights
) -> None:
    for key, tensor in sorted(body.items()):
        if not key.endswith(".ia3_l"):
            raise bad_request(
                "unknown_tensor", f"tensor {key!r} is not an IA3 vector", param=_WEIGHTS
            )
        path = _module_path(base, key.removesuffix(".ia3_l"), weights.ia3)
        if path not in base.linear_shapes:
            raise bad_request(
                "unknown_module",
                f"IA3 vector {key!r} targets {path!r}, not a linear layer",
                param=_WEIGHTS,
            )
        d_in, d_out = base.linear_shapes[path]
        # PEFT stores feed-forward vectors as (1, in) and the others as (out, 1): the shape
        # alone says which side a vector scales, even for square layers.
        if tuple(tensor.shape) == (1, d_in):
            weights.ia3_input_side.add(path)
        elif tuple(tensor.shape) != (d_out, 1):
            raise bad_request(
                "shape_mismatch",
                f"IA3 vector of {path!r} is {tuple(tensor.shape)}; expected ({d_out}, 1) or "
                f"(1, {d_in}) for a feed-forward module",
                param=_WEIGHTS,
            )
        weights.ia3[path] = as_float32(
            tensor.reshape(-1), runtime_dtype=base.dtype, what=f"tensor {key!r}", param=_WEIGHTS
        )
    if not weights.ia3:
        raise bad_request("empty_adapter", "the adapter holds no IA3 vectors", param=_WEIGHTS)
