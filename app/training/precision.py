"""The dtype a training run's forward computes in, when the base is not float32.

A half-precision base (bfloat16 or float16: CUDA's default, or `SWITCHYARD_DTYPE=bfloat16` on a
CPU with bf16 instructions) is shared with training as it is, while what a run creates (heads,
LoRA matrices, IA3 vectors, prompts) stays float32, so that the optimizer's small steps are not
rounded away. Without autocast a product would meet a float32 head and bfloat16 features and
fail; under autocast in the base's dtype each product takes its inputs in one dtype, and
losses and norms still run in float32 (torch's autocast lists).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from app.base import FrozenBase

HALF = (torch.bfloat16, torch.float16)


def autocast(base: FrozenBase) -> AbstractContextManager[object]:
    """Autocast in the base's dtype where it is half precision; nothing on a float32 base."""
    if base.dtype not in HALF:
        return contextlib.nullcontext()
    return torch.autocast(device_type=base.device.type, dtype=base.dtype)
