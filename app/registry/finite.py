"""What the runtime will compute from an adapter must be finite, not only what the file holds.

A file can hold only finite numbers and still serve NaN: `lora_alpha: 1e308` folds an infinite
scale into B, an F64 tensor can hold 1e300 (finite there, inf once cast to float32), and a value
above 65504 is finite in float32 but inf in the float16 the runtime may run in. Each tensor is
checked as the runtime will hold it: float32 (how `AdapterWeights` carries it), then cast to the
base's dtype (what the slots hold), so a bad adapter is a 400 naming its field at upload rather
than `null` scores for every request routed to it.
"""

from __future__ import annotations

import torch

from app.errors import SwitchyardError, bad_request

# The folded LoRA scale (alpha / r, or alpha / sqrt(r) with rsLoRA). PEFT's defaults give 1 and
# common recipes 0.5 to 64 (rsLoRA at high rank a few hundred). A scale beyond this multiplies
# any non-zero B into a delta that swamps the frozen layer: a mistake in the config (such as
# alpha 1e308), refused naming `lora_alpha`, rather than scores that overflow downstream.
MAX_LORA_SCALE = 4096.0


def check_representable(
    tensor: torch.Tensor, *, runtime_dtype: torch.dtype, what: str, param: str
) -> torch.Tensor:
    """`tensor` (float32) if it is finite in float32 and in `runtime_dtype`; else a 400."""
    if not bool(torch.isfinite(tensor).all()):
        raise _overflow(what, "float32", param)
    if runtime_dtype != torch.float32 and not bool(torch.isfinite(tensor.to(runtime_dtype)).all()):
        raise _overflow(what, f"{runtime_dtype} (the runtime's dtype)", param)
    return tensor


def as_float32(
    tensor: torch.Tensor, *, runtime_dtype: torch.dtype, what: str, param: str
) -> torch.Tensor:
    """A contiguous float32 copy of `tensor`, checked as the runtime will hold it."""
    out = tensor.to(torch.float32).contiguous()
    return check_representable(out, runtime_dtype=runtime_dtype, what=what, param=param)


def fold_lora_scale(
    b: torch.Tensor,
    scale: float,
    *,
    runtime_dtype: torch.dtype,
    what: str,
    config_param: str,
) -> torch.Tensor:
    """B times the LoRA scale in float32, computed in float64 so that only a result that is
    truly out of range is refused (not a finite product of a large scale and a tiny B)."""
    if not 0.0 < scale <= MAX_LORA_SCALE:
        raise bad_request(
            "invalid_adapter_config",
            f"{what}: the LoRA scale lora_alpha / r = {scale:g} is outside (0, {MAX_LORA_SCALE:g}]",
            param=config_param,
        )
    folded = (b.to(torch.float64) * scale).to(torch.float32).contiguous()
    return check_representable(
        folded,
        runtime_dtype=runtime_dtype,
        what=f"{what} times the LoRA scale {scale:g} (lora_alpha / r)",
        param=config_param,
    )


def _overflow(what: str, dtype: str, param: str) -> SwitchyardError:
    return bad_request(
        "non_finite_weights", f"{what} is NaN or Inf once held as {dtype}", param=param
    )
