"""The files of a `linear_probe` adapter: written so plain PEFT loads them, read back as a probe.

PEFT has no "head only" adapter type, and a config that adapts no module is refused
(`NoMatchingPeftModuleError`). A probe is therefore saved as a LoRA config whose only trained
part is the head, under `modules_to_save: ["classifier"]`, plus one rank-1 LoRA pair of zeros
on the first linear layer (a delta of exactly zero that PEFT needs in order to load at all).
What makes it a probe sits in three keys PEFT ignores (its warning names them):
`"switchyard_method": "linear_probe"`, and the `layers` and `pooling` its head reads, at the top
as probes always had them.

Probes stored before this format (`peft_type: LINEAR_PROBE`, the head only) still load here.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save as save_safetensors

from app.base import FrozenBase
from app.errors import bad_request

MARKER = "switchyard_method"
HEAD = "classifier"
_LORA_KEY = re.compile(r"(.+)\.lora_[AB]\.weight")
_WEIGHTS = "adapter_model.safetensors"


class ProbeSpec(BaseModel):
    """What a probe's head reads: pooled hidden states of `layers`, concatenated."""

    model_config = ConfigDict(extra="allow", strict=True)
    layers: list[int] = Field(min_length=1, max_length=64)
    pooling: Literal["mean", "cls", "max"] = "mean"


def is_probe_in_lora(config: dict[str, Any]) -> bool:
    """A LoRA config that is a probe in PEFT's clothes (see the module docstring)."""
    return config.get("peft_type") == "LORA" and config.get(MARKER) == "linear_probe"


def probe_files(
    base: FrozenBase, *, layers: list[int], pooling: str, weight: torch.Tensor, bias: torch.Tensor
) -> dict[str, bytes]:
    """`adapter_config.json` and `adapter_model.safetensors` of a probe with this head."""
    path = next(iter(base.linear_shapes))
    d_in, d_out = base.linear_shapes[path]
    key = f"base_model.model.{_model_path(base, path)}"
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": 1,
        "lora_alpha": 1,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": [path],
        "modules_to_save": [HEAD],
        "base_model_name_or_path": str(base.path),
        MARKER: "linear_probe",
        "layers": list(layers),
        "pooling": pooling,
    }
    tensors = {
        f"base_model.model.{HEAD}.weight": weight.to(torch.float32).contiguous(),
        f"base_model.model.{HEAD}.bias": bias.to(torch.float32).contiguous(),
        f"{key}.lora_A.weight": torch.zeros(1, d_in),
        f"{key}.lora_B.weight": torch.zeros(d_out, 1),
    }
    return {
        "adapter_config.json": json.dumps(config, indent=2).encode(),
        "adapter_model.safetensors": save_safetensors(tensors),
    }


def check_probe_body(body: dict[str, torch.Tensor]) -> None:
    """Besides its head a probe may hold only all-zero LoRA weights (the no-op pair above):
    ignoring them changes nothing, so anything else is refused rather than dropped."""
    for key, tensor in sorted(body.items()):
        if _LORA_KEY.fullmatch(key) is None or bool(tensor.any()):
            raise bad_request(
                "unknown_tensor",
                f"a linear probe holds only its head (and an all-zero LoRA pair so that PEFT "
                f"loads it); found {key!r}",
                param=_WEIGHTS,
            )


def _model_path(base: FrozenBase, path: str) -> str:
    # The inverse of `Base.module_path`: PEFT saves task models' keys under the backbone prefix.
    if base.kind == "encoder" and base.prefix:
        return f"{base.prefix}.{path}"
    return path
