"""The frozen base's fingerprint is of its weights' values, whatever dtype serves them: an
adapter made on a float32 base registers and serves on a bfloat16 or float16 one (a CPU with
bf16 instructions, a CUDA replica), and one stored under the older dtype-specific fingerprint
still loads; any other base's adapter is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.base import fingerprint, has_bf16, load_base
from app.config import Settings
from app.errors import SwitchyardError
from app.quantized import cpu_flags
from app.registry.records import AdapterRef
from app.runtime.engine import EncodeRequest
from tests.unit.method_adapters import SEQ, make_runtime, peft_files, register

TEXTS = ["a gripping, beautiful film", "meh", "the plot falls apart but the actors shine"]
LABELS = ["l0", "l1", "l2"]


def _settings(folder: Path, store: Path, dtype: str) -> Settings:
    return Settings(base_model=str(folder), store=store, device="cpu", dtype=dtype, _env_file=None)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_base_has_the_float32_fingerprint(
    tiny_bert_dir: Path, tmp_path: Path, dtype: str
) -> None:
    plain = load_base(_settings(tiny_bert_dir, tmp_path, "float32"))
    half = load_base(_settings(tiny_bert_dir, tmp_path, dtype))
    assert half.dtype == getattr(torch, dtype) and plain.dtype == torch.float32
    assert half.fingerprint == plain.fingerprint and not plain.aliases
    # The cast weights' own fingerprint, what such a base was known by before: still accepted.
    assert half.aliases == {fingerprint(half.model)} != {half.fingerprint}
    assert half.accepts(fingerprint(half.model)) and half.accepts(plain.fingerprint)
    assert half.accepts(None) and not half.accepts("sha256:" + "0" * 64)
    for hostile in ([half.fingerprint], {"a": 1}, 3, True):  # not a string: refused, no 500
        assert not half.accepts(hostile)


def test_a_float32_adapter_serves_on_a_bfloat16_base_close_to_float(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    folder = peft_files(tiny_bert_dir, tmp_path / "lora", method="lora", task=SEQ, labels=3, seed=1)
    made_on = load_base(_settings(tiny_bert_dir, tmp_path, "float32")).fingerprint
    outputs: dict[str, list[torch.Tensor]] = {}
    for dtype in ("float32", "bfloat16"):
        settings = _settings(tiny_bert_dir, tmp_path / dtype, dtype)
        base = load_base(settings)
        runtime, registry = make_runtime(base, settings)
        # As a float32 service wrote it into switchyard.json.
        register(
            registry, "lora", folder, task=SEQ, labels=LABELS, meta={"base_fingerprint": made_on}
        )
        engine = runtime.encoder
        job = EncodeRequest(
            key=AdapterRef("lora", 1), task=SEQ, rows=engine.prepare(TEXTS, task=SEQ), raw=True
        )
        outputs[dtype] = [t.float() for t in engine.run([job])[0].outputs or []]
    assert len(outputs["bfloat16"]) == len(TEXTS)
    for half, full in zip(outputs["bfloat16"], outputs["float32"], strict=True):
        assert float(nn.functional.cosine_similarity(half, full, dim=0)) > 0.99


def test_an_adapter_of_another_base_is_refused_on_a_bfloat16_base(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tiny_bert_dir, tmp_path / "store", "bfloat16")
    _runtime, registry = make_runtime(load_base(settings), settings)
    folder = peft_files(tiny_bert_dir, tmp_path / "lora", method="lora", task=SEQ, labels=3, seed=1)
    with pytest.raises(SwitchyardError) as refused:
        other = {"base_fingerprint": "sha256:" + "0" * 64}
        register(registry, "lora", folder, task=SEQ, labels=LABELS, meta=other)
    assert refused.value.status == 409 and refused.value.code == "base_mismatch"
    assert registry.store.names() == []


def test_the_train_dtype_setting_reaches_the_base_or_stops_the_start(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tiny_bert_dir, tmp_path, "float32").model_copy(
        update={"train_dtype": "bfloat16"}
    )
    if has_bf16(cpu_flags()):
        assert load_base(settings).train_dtype == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="needs a CPU with bf16 instructions"):
            load_base(settings)
    assert load_base(_settings(tiny_bert_dir, tmp_path, "float32")).train_dtype is None
