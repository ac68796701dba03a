"""`method: "lora"`: low-rank deltas `B @ A` on the base's linear layers (PEFT's LoRA).

Files: PEFT's `LORA` config and `<module>.lora_{A,B}.weight` pairs; the scale (alpha / r, or
alpha / sqrt(r) with rsLoRA) is folded into B as the runtime holds it. Served by the per-slot
LoRA tables of app/runtime/layers.py (`MultiLoraLinear`). Trained as PEFT's own model, on an
encoder (one head per row or per token) or a decoder (generation).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from pydantic import Field
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.methods.base import (
    ANY_BASE,
    CONFIG,
    WEIGHTS,
    Entry,
    Parsing,
    StrictSpec,
    Traits,
    Wrapping,
    module_path,
    spec,
    task_type,
)
from app.registry.finite import as_float32, fold_lora_scale
from app.registry.patterns import compile_patterns

if TYPE_CHECKING:
    from app.training.hyperparameters import Hyperparameters

# A LoRA scale: finite and positive (JSON's 1e999 parses to inf, and 10**400 has no float).
Alpha = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Rank = Annotated[int, Field(ge=1)]
_KEY = re.compile(r"(.+)\.lora_([AB])\.weight")


class LoraConfigSpec(StrictSpec):
    """The fields of PEFT's LoraConfig that serving acts on."""

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


class LoraFiles:
    """PEFT's LORA files."""

    peft_type = "LORA"

    def parse(self, job: Parsing) -> int:
        """Every `lora_A`/`lora_B` pair, on a linear layer of the base, scale folded into B."""
        lora: LoraConfigSpec = spec(LoraConfigSpec, job.config)
        base, weights = job.base, job.weights
        pairs = _pairs(job.body)
        ranks = compile_patterns("rank_pattern", lora.rank_pattern)
        alphas = compile_patterns("alpha_pattern", lora.alpha_pattern)
        for module_key, ab in sorted(pairs.items()):
            path = module_path(base, module_key, weights.lora)
            if path not in base.linear_shapes:
                raise bad_request(
                    "unknown_module",
                    f"tensor {module_key!r} targets {path!r}, which is not a linear layer of "
                    f"base {base.name}",
                    param=WEIGHTS,
                )
            if set(ab) != {"A", "B"}:
                raise bad_request(
                    "incomplete_lora",
                    f"module {module_key!r} lacks lora_A or lora_B",
                    param=WEIGHTS,
                )
            rank = int(ranks.value_for(path, lora.r))
            alpha = float(alphas.value_for(path, lora.lora_alpha))
            weights.lora[path] = _pair(
                lora, path, ab, base, rank=rank, alpha=alpha, max_rank=job.max_rank
            )
            weights.rank = max(weights.rank, ab["A"].shape[0])
        return 1


def _pairs(body: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """module key -> {"A": tensor, "B": tensor}; any other tensor is refused."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in body.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise bad_request(
                "unknown_tensor",
                f"tensor {key!r} is not a LoRA weight of a linear layer",
                param=WEIGHTS,
            )
        pairs.setdefault(match[1], {})[match[2]] = tensor
    if not pairs:
        raise bad_request("empty_adapter", "the adapter holds no LoRA weights", param=WEIGHTS)
    return pairs


def _pair(
    lora: LoraConfigSpec,
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
    if a.dim() != 2 or b.dim() != 2 or (*a.shape, *b.shape) != (rank, d_in, d_out, rank):
        raise bad_request(
            "shape_mismatch",
            f"LoRA of {path!r} has A {tuple(a.shape)} and B {tuple(b.shape)}; this base needs "
            f"A ({rank}, {d_in}) and B ({d_out}, {rank})",
            param=WEIGHTS,
        )
    scale = alpha / math.sqrt(rank) if lora.use_rslora else alpha / rank
    runtime = base.dtype
    a32 = as_float32(a, runtime_dtype=runtime, what=f"lora_A of {path!r}", param=WEIGHTS)
    b32 = fold_lora_scale(
        b, scale, runtime_dtype=runtime, what=f"lora_B of {path!r}", config_param=CONFIG
    )
    return a32, b32


def _config(
    hp: Hyperparameters, targets: list[str] | None, task: TaskType, head: list[str] | None
) -> LoraConfig:
    return LoraConfig(
        task_type=task,
        r=hp.rank,
        lora_alpha=hp.alpha or 2 * hp.rank,  # type: ignore[arg-type]
        lora_dropout=hp.dropout,
        target_modules=targets if targets is not None else hp.target_modules,
        modules_to_save=head,
    )


class LoraTrainer:
    """PEFT's LoRA model; the head kept under `modules_to_save` (the trainer's head rate)."""

    def wrap(self, job: Wrapping) -> nn.Module:
        """PEFT's LoRA model over an encoder view."""
        config = _config(job.hp, job.targets, task_type(job.task), ["classifier"])
        return get_peft_model(job.view, config)

    def causal_lm(
        self, view: nn.Module, hp: Hyperparameters, *, targets: list[str] | None
    ) -> PeftModel:
        """PEFT's LoRA model over a decoder view (generation)."""
        model: PeftModel = get_peft_model(view, _config(hp, targets, TaskType.CAUSAL_LM, None))
        return model


LORA = Entry(
    name="lora",
    traits=Traits(bases=ANY_BASE, pooled_head=True, layer_targets=True),
    files=LoraFiles(),
    trainer=LoraTrainer(),
    causal=LoraTrainer(),
)
