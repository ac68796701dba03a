"""The dtype a training run's forward computes in, when the base is not float32.

A half-precision base (bfloat16 or float16: CUDA's default, or `SWITCHYARD_DTYPE=bfloat16` on a
CPU with bf16 instructions) is shared with training as it is, while what a run creates (heads,
LoRA matrices, IA3 vectors, prompts) stays float32, so that the optimizer's small steps are not
rounded away. Without autocast a product would meet a float32 head and bfloat16 features and
fail; under autocast in the base's dtype each product takes its inputs in one dtype, and
losses and norms still run in float32 (torch's autocast lists).

On a float32 base, `SWITCHYARD_TRAIN_DTYPE=bfloat16` runs the same autocast: on a CPU with
bf16 instructions (avx512_bf16, AMX) a step's products are about twice as fast, and the
adapter is then served on the float32 base (bench/README.md measures both).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from app.base import FrozenBase

HALF = (torch.bfloat16, torch.float16)


def compute_dtype(base: FrozenBase) -> torch.dtype | None:
    """The dtype training's products run in: a half base's own, else `train_dtype` (None:
    float32, no autocast)."""
    return base.dtype if base.dtype in HALF else base.train_dtype


def autocast(base: FrozenBase) -> AbstractContextManager[object]:
    """Autocast in `compute_dtype(base)`; nothing where that is float32."""
    dtype = compute_dtype(base)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=base.device.type, dtype=dtype)
