"""An adapter file's tensor names: PEFT's wrappers stripped, the head split from the body.

Every decision here is made on sorted names, never on set or file order, so an upload is
accepted or refused the same way on every run (and after a restart with another hash seed).
"""

from __future__ import annotations

import torch

from app.errors import bad_request
from app.registry.finite import as_float32
from app.tasks import head_rows

HEAD_MODULES = ("classifier", "score")
_WEIGHTS = "adapter_model.safetensors"


def normalise_key(key: str) -> str:
    """Strip PEFT's wrappers: `base_model.model.` for tuners, `base_model.` for prompt methods."""
    for prefix in ("base_model.model.", "base_model."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def normalised(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without PEFT's wrappers; two keys naming one tensor are refused, not resolved by
    whichever the file happened to list last."""
    out: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    for key in sorted(tensors):
        short = normalise_key(key)
        if short in original:
            raise bad_request(
                "duplicate_tensor",
                f"tensors {original[short]!r} and {key!r} both name {short!r}",
                param=_WEIGHTS,
            )
        original[short] = key
        out[short] = tensors[key]
    return out


def split_head(tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The head's module name and its tensors by parameter name. Two head modules (both
    `classifier.*` and `score.*`) are ambiguous: refused, naming a key of each, so the outcome
    never depends on set or file order."""
    modules = sorted({k.split(".")[0] for k in tensors} & set(HEAD_MODULES))
    if len(modules) > 1:
        keys = [min(k for k in tensors if k.split(".")[0] == m) for m in modules]
        raise bad_request(
            "invalid_head",
            f"the adapter holds two heads, {keys[0]!r} and {keys[1]!r}; keep one",
            param=_WEIGHTS,
        )
    if not modules:
        return HEAD_MODULES[0], {}
    module = modules[0]
    return module, {
        k.partition(".")[2]: v for k, v in sorted(tensors.items()) if k.split(".")[0] == module
    }


def check_head(
    head: dict[str, torch.Tensor],
    *,
    module: str,
    task: str,
    labels: list[str],
    in_features: int,
) -> dict[str, torch.Tensor]:
    rows = head_rows(task, labels)
    if rows == 0:
        if head:
            raise bad_request(
                "unexpected_head", f"task {task!r} takes no head but one was given", param=_WEIGHTS
            )
        return {}
    width = in_features
    weight, bias = head.get("weight"), head.get("bias")
    if weight is None or set(head) - {"weight", "bias"}:
        raise bad_request(
            "invalid_head",
            f"task {task!r} needs a head '{module}.weight' [{rows}, {width}] (+ bias); "
            f"found {sorted(head)}",
            param=_WEIGHTS,
        )
    if tuple(weight.shape) != (rows, width) or (bias is not None and tuple(bias.shape) != (rows,)):
        raise bad_request(
            "shape_mismatch",
            f"head weight {tuple(weight.shape)} does not fit {rows} outputs of task {task!r} "
            f"over {width} features",
            param=_WEIGHTS,
        )
    # The head runs in float32 whatever the base's dtype (see the engine's decode).
    f32 = torch.float32
    bias = bias if bias is not None else torch.zeros(rows)
    return {
        "weight": as_float32(weight, runtime_dtype=f32, what=f"{module}.weight", param=_WEIGHTS),
        "bias": as_float32(bias, runtime_dtype=f32, what=f"{module}.bias", param=_WEIGHTS),
    }
