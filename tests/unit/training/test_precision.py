"""Training on a half-precision base: CUDA's default dtype (bfloat16, else float16), and
`SWITCHYARD_DTYPE=bfloat16` on a CPU. Run on the CPU, the code path a GPU takes (and on the GPU
under bench/gpu_check.sh).
And `SWITCHYARD_TRAIN_DTYPE=bfloat16`: a float32 base trained under bfloat16 autocast.

Regression: every PEFT method failed on such a base at its first evaluation ("mat1 and mat2
must have the same dtype"), as the new head is float32 and the base's features were not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load
from torch import nn
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase, train_dtype, wrap_base
from app.config import Settings
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.runtime.engine import EncodeRequest
from app.training import precision
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan
from tests.conftest import device_under_test
from tests.unit.method_adapters import SEQ, TOKEN, make_runtime, register_files
from tests.unit.reporters import RecordingReporter
from tests.unit.tiny_decoder import tiny_llama, tiny_tokenizer
from tests.unit.training.test_methods_training import labels_of, plan_for

HYPER = {"epochs": 2, "batch_size": 8, "seed": 0, "head_init": "random", "num_virtual_tokens": 3}


def bert_in(folder: Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> FrozenBase:
    from transformers import BertModel

    model = BertModel.from_pretrained(folder)
    nn.Module.to(model, dtype)
    return wrap_base(model, tokenizer, name="tiny", path=folder, device=device_under_test())


def run(base: FrozenBase, plan: TrainingPlan) -> tuple[TrainingOutcome, torch.Tensor]:
    """The whole trainer on `base`: its outcome and the losses it logged (all finite)."""
    reporter = RecordingReporter()
    outcome = train(
        plan, base=base, reporter=reporter, cancel=CancelToken(), max_rank=16, max_tokens=64
    )
    losses = torch.tensor([float(data["loss"]) for kind, data in reporter.events if kind == "loss"])
    assert len(losses) and bool(torch.isfinite(losses).all()), losses
    return outcome, losses


@pytest.mark.parametrize(
    ("method", "task", "dtype"),
    [
        ("lora", SEQ, torch.bfloat16),
        ("lora", SEQ, torch.float16),
        ("lora", TOKEN, torch.bfloat16),
        ("ia3", SEQ, torch.bfloat16),
        ("prompt", TOKEN, torch.bfloat16),
        ("prefix", SEQ, torch.bfloat16),
    ],
)
def test_an_encoder_adapter_trains_registers_and_serves_on_a_half_base(
    method: str,
    task: str,
    dtype: torch.dtype,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    settings: Settings,
) -> None:
    base = bert_in(tiny_bert_dir, tokenizer, dtype)
    runtime, registry = make_runtime(base, settings)
    labels = labels_of(task)
    plan = plan_for(task, method, train_rows=16, hyperparameters=HYPER)
    outcome, _losses = run(base, plan)
    # What the run made stays float32: the optimizer's steps on it were not rounded to half.
    assert {t.dtype for t in load(outcome.files[WEIGHTS_FILE]).values()} == {torch.float32}
    register_files(registry, "a", outcome.files, task=task, labels=labels)
    engine = runtime.encoder
    job = EncodeRequest(
        key=AdapterRef("a", 1), task=task, rows=engine.prepare(["we went to rome"], task=task)
    )
    result = engine.run([job])[0]
    assert result.error is None and result.outputs, result.error


def test_a_generation_lora_trains_on_a_bfloat16_decoder() -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    nn.Module.to(model, torch.bfloat16)
    device = device_under_test()
    base = wrap_base(model, tokenizer, name="tiny-llama", path=Path("."), device=device)
    words = ["fox", "dog", "cat", "owl", "elk", "ant", "bee", "cow", "yak", "emu"]
    examples = [{"prompt": f"word: {w} ->", "completion": " fine"} for w in words]
    plan = TrainingPlan(
        adapter="g",
        task="generation",
        method="lora",
        train_rows=examples[:8],
        validation_rows=examples[8:],
        labels=[],
        hyperparameters={"batch_size": 4, "seed": 0, "epochs": 2},
    )
    outcome, _losses = run(base, plan)
    assert outcome.metrics and CONFIG_FILE in outcome.files


def test_train_dtype_bfloat16_runs_a_float32_base_under_autocast(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """The same seeded run twice: under bfloat16 the losses move a little (so the products
    did run in bfloat16), and the adapter is float32 like any other."""
    plan = plan_for(SEQ, "lora", train_rows=16, hyperparameters=HYPER)
    losses: dict[torch.dtype | None, torch.Tensor] = {}
    for dtype in (None, torch.bfloat16):
        base = bert_in(tiny_bert_dir, tokenizer, torch.float32)
        base.train_dtype = dtype
        assert precision.compute_dtype(base) == dtype
        outcome, losses[dtype] = run(base, plan)
        weights = load(outcome.files[WEIGHTS_FILE])
        assert {t.dtype for t in weights.values()} == {torch.float32}
    assert not torch.equal(losses[None], losses[torch.bfloat16])
    assert torch.allclose(losses[None], losses[torch.bfloat16], rtol=0.05)


def test_a_half_base_trains_in_its_own_dtype_whatever_train_dtype_says(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    base = bert_in(tiny_bert_dir, tokenizer, torch.float16)
    base.train_dtype = torch.bfloat16
    assert precision.compute_dtype(base) == torch.float16


FLAGS = st.frozensets(st.sampled_from(["sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16"]))


@given(FLAGS)
def test_train_dtype_bfloat16_needs_bf16_instructions_on_a_cpu(flags: frozenset[str]) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    asked = Settings(train_dtype="bfloat16", _env_file=None)
    assert train_dtype(Settings(_env_file=None), device=cpu, flags=flags) is None
    assert train_dtype(asked, device=cuda, flags=flags) == torch.bfloat16
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert train_dtype(asked, device=cpu, flags=flags) == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="needs a CPU with bf16 instructions"):
            train_dtype(asked, device=cpu, flags=flags)


def test_train_dtype_bfloat16_is_refused_on_an_int8_base() -> None:
    with pytest.raises(ValidationError, match="train_dtype 'bfloat16' needs a float base"):
        Settings(dtype="int8", train_dtype="bfloat16", _env_file=None)
