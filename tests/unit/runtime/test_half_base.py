"""The runtime on a half-precision base (CUDA's default, `SWITCHYARD_DTYPE=bfloat16` on CPU),
on the CPU (or the GPU under bench/gpu_check.sh): one mixed batch of every method on sequence
and token tasks gives the float32 base's outputs for the same adapters, within half
precision's rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.base import load_base
from app.config import Settings
from app.registry.records import AdapterRef
from app.runtime.engine import EncodeRequest
from tests.conftest import device_under_test
from tests.unit.method_adapters import SEQ, TOKEN, make_runtime, peft_files, register

TEXTS = ["we went to paris today", "great fine movie", "rome"]
COMBOS = [(method, task) for method in ("lora", "ia3", "prompt", "prefix") for task in (SEQ, TOKEN)]


def mixed_batch(folder: Path, work: Path, dtype: str) -> list[list[torch.Tensor]]:
    """Every adapter's outputs from one `engine.run` on a base loaded in `dtype`."""
    settings = Settings(
        base_model=str(folder),
        store=work / dtype,
        device=str(device_under_test()),
        dtype=dtype,
        _env_file=None,
    )
    runtime, registry = make_runtime(load_base(settings), settings)
    engine, jobs = runtime.encoder, []
    for n, (method, task) in enumerate(COMBOS):
        files = peft_files(folder, work / f"{n}", method=method, task=task, labels=3, seed=n)
        register(registry, f"a{n}", files, task=task, labels=["x", "y", "z"])
        rows = engine.prepare(TEXTS, task=task)
        jobs.append(EncodeRequest(key=AdapterRef(f"a{n}", 1), task=task, rows=rows, raw=True))
    results = engine.run(jobs)
    assert all(r.error is None for r in results), [r.error for r in results]
    return [[t.float().cpu() for t in r.outputs or []] for r in results]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_mixed_batch_on_a_half_base_matches_float32(
    tiny_bert_dir: Path, tmp_path: Path, dtype: str
) -> None:
    full = mixed_batch(tiny_bert_dir, tmp_path, "float32")
    half = mixed_batch(tiny_bert_dir, tmp_path, dtype)
    for combo, ours, reference in zip(COMBOS, half, full, strict=True):
        assert len(ours) == len(TEXTS), combo
        for a, b in zip(ours, reference, strict=True):
            cosine = float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
            assert cosine > 0.99, (combo, cosine)
