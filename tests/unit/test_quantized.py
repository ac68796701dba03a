"""The int8 frozen base (`SWITCHYARD_DTYPE=int8`): settings, loading, accuracy, training weights.

Tolerances: weights are quantized per output channel (error <= max|w_row| / 254 per weight) and
activations per call over the whole tensor with 7-bit range (error <= max|x| / 254; 8-bit,
half that, on CPUs with VNNI), so each
layer's output carries a relative error of about 1%; through two tiny layers the logits of the
same adapter stay within a cosine of 0.99 of the float base's. Activation scales are taken over
the whole batch, so a row's int8 output depends slightly on the other rows: int8 rows are
compared with the float base, not with themselves alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, TaskType, get_peft_model
from pydantic import ValidationError
from safetensors.torch import load
from torch import nn
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase, int8_plan, load_base, pick_dtype, quantize_base, wrap_base
from app.config import Settings
from app.quantized import (
    AMX_FLAG,
    VNNI_FLAGS,
    Int8Linear,
    Int8Plan,
    Int8TrainLinear,
    cpu_flags,
    cpu_has_vnni,
    int8_bytes,
)
from app.registry.records import AdapterRef
from app.registry.store import WEIGHTS_FILE
from app.runtime.engine import EncodeRequest
from app.training.trainer import train
from app.training.types import CancelToken, TrainingPlan
from app.training.view import build_view
from tests.unit.method_adapters import SEQ, make_runtime, peft_files, register, register_files
from tests.unit.reporters import RecordingReporter

TEXTS = ["a gripping, beautiful film", "meh", "the plot falls apart but the actors shine"]
LABELS = ["l0", "l1", "l2"]


def fresh_base(folder: Path, tokenizer: PreTrainedTokenizerBase, *, int8: bool) -> FrozenBase:
    base = wrap_base(
        BertModel.from_pretrained(folder),
        tokenizer,
        name="tiny-bert",
        path=folder,
        device=torch.device("cpu"),
    )
    if int8:
        quantize_base(base)
    return base


def cosine_rows(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return min(
        float(nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_int8_is_refused_off_cpu_at_start(device: str) -> None:
    with pytest.raises(ValidationError, match=f"dtype 'int8' needs device cpu, not '{device}'"):
        Settings(dtype="int8", device=device, _env_file=None)


@given(st.sampled_from(["auto", "cpu"]), st.sampled_from(["auto", "float32", "int8"]))
def test_int8_and_float_dtypes_are_accepted_on_cpu(device: str, dtype: str) -> None:
    assert Settings(dtype=dtype, device=device, _env_file=None).dtype == dtype


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValidationError, match="dtype"):
        Settings(dtype="int4", _env_file=None)


def test_dtype_choice_for_each_device_runs_without_a_gpu() -> None:
    cuda = torch.device("cuda")
    assert pick_dtype("auto", cuda) in (torch.bfloat16, torch.float16)
    assert pick_dtype("float16", cuda) == torch.float16
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("int8", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="int8 kernels are CPU-only"):
        pick_dtype("int8", cuda)


def test_int8_setting_loads_a_quantized_base_with_the_float_fingerprint(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    int8 = load_base(
        Settings(base_model=str(tiny_bert_dir), device="cpu", dtype="int8", _env_file=None)
    )
    plain = load_base(
        Settings(base_model=str(tiny_bert_dir), device="cpu", dtype="float32", _env_file=None)
    )
    linears = [m for m in int8.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert len(int8.int8_layers) == len(linears) and not plain.int8_layers
    assert int8.fingerprint == plain.fingerprint  # float adapters load on the int8 base
    assert int8.dtype == torch.float32
    assert int8_bytes(int8.model) > 0 and int8_bytes(plain.model) == 0


def test_base_and_lora_outputs_on_int8_are_close_to_float(
    tiny_bert_dir: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    folder = peft_files(tiny_bert_dir, tmp_path / "lora", method="lora", task=SEQ, labels=3, seed=1)
    outputs = {}
    for int8 in (False, True):
        base = fresh_base(tiny_bert_dir, tokenizer, int8=int8)
        settings = Settings(store=tmp_path / f"store{int8}", max_wait_ms=1.0, _env_file=None)
        runtime, registry = make_runtime(base, settings)
        register(registry, "lora", folder, task=SEQ, labels=LABELS)
        engine = runtime.encoder
        job = EncodeRequest(
            key=AdapterRef("lora", 1), task=SEQ, rows=engine.prepare(TEXTS, task=SEQ), raw=True
        )
        outputs[int8] = engine.run([job])[0].outputs or []
    assert cosine_rows(outputs[True], outputs[False]) > 0.99
    # ...and the int8 path really ran: the outputs are not bit-equal to the float ones.
    assert any(not torch.equal(a, b) for a, b in zip(outputs[True], outputs[False], strict=True))


def test_mixed_methods_in_one_forward_on_the_int8_base(
    tiny_bert_dir: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    specs = [("lora", 0), ("ia3", 0), ("prompt", 3), ("prefix", 2)]
    folders = {
        f"{m}{v}": peft_files(
            tiny_bert_dir,
            tmp_path / f"{m}{v}",
            method=m,
            task=SEQ,
            labels=3,
            seed=n,
            virtual=max(v, 1),
        )
        for n, (m, v) in enumerate(specs)
    }
    outputs = {}
    for int8 in (False, True):
        base = fresh_base(tiny_bert_dir, tokenizer, int8=int8)
        settings = Settings(store=tmp_path / f"store{int8}", max_wait_ms=1.0, _env_file=None)
        runtime, registry = make_runtime(base, settings)
        engine = runtime.encoder
        for name, folder in folders.items():
            register(registry, name, folder, task=SEQ, labels=LABELS)
        jobs = [
            EncodeRequest(
                key=AdapterRef(n, 1), task=SEQ, rows=engine.prepare(TEXTS, task=SEQ), raw=True
            )
            for n in folders
        ]
        results = engine.run(jobs)
        assert all(r.error is None for r in results), [r.error for r in results]
        outputs[int8] = [r.outputs or [] for r in results]
    for name, served, reference in zip(folders, outputs[True], outputs[False], strict=True):
        assert cosine_rows(served, reference) > 0.99, name


def test_training_views_of_the_int8_base_share_its_float_weights_and_kernels(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    base = fresh_base(tiny_bert_dir, tokenizer, int8=True)
    view = build_view(base, task=SEQ, num_labels=3)
    query = view.get_submodule("bert.encoder.layer.0.attention.self.query")
    assert isinstance(query, Int8TrainLinear)  # an nn.Linear: PEFT injects into it as usual
    assert query.weight.dtype == torch.float32
    served = base.model.get_submodule("encoder.layer.0.attention.self.query")
    assert isinstance(served, Int8Linear)
    assert query.weight.data_ptr() == served.weight.data_ptr()  # shared, not copied
    assert query.kernel is served.int8  # the served kernel itself
    assert sum(p.numel() for p in view.parameters() if p.requires_grad) == 32 * 3 + 3
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    view.eval()  # no dropout: compare the arithmetic
    with torch.no_grad():
        trained_on = view.get_submodule("bert")(**batch).last_hidden_state
        served_as = base.model(**batch).last_hidden_state
    assert torch.equal(trained_on, served_as)  # the adapter learns the function it is served


def test_int8_training_gradients_go_through_the_float_weight() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(8, 5)
    served = Int8Linear(linear)
    layer = Int8TrainLinear(linear, served)
    x = torch.randn(3, 8, requires_grad=True)
    grad = torch.randn(3, 5)
    out = layer(x)
    out.backward(grad)
    assert x.grad is not None and torch.allclose(x.grad, grad @ linear.weight, atol=1e-6)
    assert linear.weight.grad is None  # the frozen weight takes no gradient
    with torch.no_grad():
        assert torch.equal(out, served(x))  # forward: the int8 kernel's output


def test_a_lora_trains_on_the_int8_base(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    base = fresh_base(tiny_bert_dir, tokenizer, int8=True)
    view = build_view(base, task=SEQ, num_labels=3)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"])
    model = get_peft_model(view, config)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    loss = model(**batch, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    # B starts at zero (so A's first gradient is zero): B's gradient is the live one
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # checkpoints read the state dict: the served kernel's packed buffers are not in it
    assert not [k for k in model.state_dict() if "kernel" in k or "_packed_params" in k]


def test_info_names_the_int8_kernels_of_an_int8_base(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    """`dtype` stays the float weights' (adapters and training read them); `linear_kernels`
    says what serving computes in."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = Settings(store=tmp_path / "store", _env_file=None)
    for int8, kernels in ((True, "int8"), (False, "float32")):
        base = fresh_base(tiny_bert_dir, tokenizer, int8=int8)
        with TestClient(create_app(settings, base=base)) as client:
            info = client.get("/v1/info").json()["base_model"]
        assert (info["dtype"], info["linear_kernels"]) == ("float32", kernels)


def test_a_lora_job_on_the_int8_base_stores_only_its_own_weights(
    tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase, settings: Settings
) -> None:
    """The whole trainer on an int8 base (the served runtime wraps its layers first): the job
    ends, its file holds the LoRA and the head only, and the int8 runtime serves it."""
    base = fresh_base(tiny_bert_dir, tokenizer, int8=True)
    runtime, registry = make_runtime(base, settings)
    words = [("good", "pos"), ("great", "pos"), ("bad", "neg"), ("awful", "neg")]
    train_rows = [{"text": f"it was {w} today", "label": label} for w, label in words * 4]
    plan = TrainingPlan(
        adapter="q",
        task=SEQ,
        method="lora",
        train_rows=train_rows,
        validation_rows=train_rows[:4],
        labels=["neg", "pos"],
        hyperparameters={"epochs": 2, "batch_size": 4, "seed": 0},
    )
    outcome = train(
        plan,
        base=base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=8,
        max_tokens=32,
    )
    stored = load(outcome.files[WEIGHTS_FILE])
    assert stored and all("lora_" in k or "classifier" in k for k in stored), sorted(stored)[:5]
    register_files(registry, "q", outcome.files, task=SEQ, labels=["neg", "pos"])
    rows = runtime.encoder.prepare(["it was good today"], task=SEQ)
    result = runtime.encoder.run([EncodeRequest(key=AdapterRef("q", 1), task=SEQ, rows=rows)])[0]
    assert result.error is None and result.outputs, result.error


FLAG_WORDS = st.sampled_from(
    ["fpu", "sse2", "avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
)


@given(st.lists(FLAG_WORDS, max_size=8), st.text(max_size=40))
def test_cpu_has_vnni_reads_the_flags_line(flags: list[str], noise: str) -> None:
    # Only the `flags` line counts: noise before it (model names, other keys) never does.
    cpuinfo = Path(tempfile.mkdtemp()) / "cpuinfo"
    noise_line = "model name\t: " + noise.replace("\n", " ").replace("\r", " ")
    cpuinfo.write_text(f"processor\t: 0\n{noise_line}\nflags\t\t: {' '.join(flags)}\n")
    assert cpu_has_vnni(cpuinfo) == bool(VNNI_FLAGS & set(flags))


def test_cpu_has_vnni_is_false_where_unknown(tmp_path: Path) -> None:
    assert cpu_has_vnni(tmp_path / "missing") is False
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_has_vnni(tmp_path / "noflags") is False


@given(
    st.sets(FLAG_WORDS, max_size=7),
    st.sampled_from(["auto", "7bit", "8bit"]),
    st.integers(min_value=0, max_value=4096),
)
def test_int8_plan_follows_the_cpu_and_the_settings(
    flags: set[str], activations: str, from_tokens: int
) -> None:
    settings = Settings(
        int8_activations=activations, int8_onednn_from_tokens=from_tokens, _env_file=None
    )
    vnni = bool(VNNI_FLAGS & flags)
    if activations == "8bit" and not vnni:
        with pytest.raises(ValueError, match=r"'8bit' needs a CPU with VNNI.*avx512_vnni"):
            int8_plan(settings, flags=frozenset(flags))
        return
    plan = int8_plan(settings, flags=frozenset(flags))
    assert plan.full_range == (activations == "8bit" or (activations == "auto" and vnni))
    assert plan.onednn_from_tokens == (from_tokens if AMX_FLAG in flags else 0)


def test_int8_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        Settings(int8_activations="6bit", _env_file=None)
    with pytest.raises(ValidationError):
        Settings(int8_onednn_from_tokens=-1, _env_file=None)


def test_cpu_flags_of_this_machine_parse() -> None:
    # Whatever this CPU has, the flags are a set of words and VNNI is read from them.
    flags = cpu_flags()
    assert all(flag and " " not in flag for flag in flags)
    assert cpu_has_vnni() == bool(VNNI_FLAGS & flags)


@pytest.mark.skipif(not cpu_has_vnni(), reason="8-bit activations need VNNI or AMX int8")
def test_full_range_activations_halve_the_error() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(384, 384)
    # Real activations have outlier channels; they set the scale the other channels share.
    x = torch.randn(64, 384)
    x[:, :4] *= 8.0
    exact = linear(x).detach()
    errors = {}
    for full in (False, True):
        layer = Int8Linear(linear, Int8Plan(full_range=full))
        with torch.no_grad():
            errors[full] = float((layer(x) - exact).norm() / exact.norm())
    assert errors[True] < 0.7 * errors[False], errors


@pytest.mark.skipif(
    "onednn" not in torch.backends.quantized.supported_engines, reason="torch without oneDNN"
)
@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=24))
def test_calls_of_many_tokens_take_the_onednn_packing(tokens: int, threshold: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    layer = Int8Linear(linear, Int8Plan(full_range=False, onednn_from_tokens=threshold))
    assert layer.int8_large is not None
    x = torch.randn(tokens, 32)
    with torch.no_grad():
        out = layer(x)
        by_fbgemm = torch.ops.quantized.linear_dynamic(
            x, layer.int8._packed_params._packed_params, reduce_range=True
        )
        by_onednn = torch.ops.quantized.linear_dynamic(
            x, layer.int8_large._packed_params._packed_params, reduce_range=True
        )
        exact = linear(x)
    assert torch.equal(out, by_onednn if tokens >= threshold else by_fbgemm)
    # Either packing computes the same layer: the error is int8's, not a different function.
    assert float((out - exact).norm() / exact.norm()) < 0.05


def test_both_packings_are_counted_and_the_plan_shows() -> None:
    linear = nn.Linear(32, 16)
    single = nn.Sequential(Int8Linear(linear))
    double = nn.Sequential(Int8Linear(linear, Int8Plan(full_range=True, onednn_from_tokens=64)))
    assert int8_bytes(double) == 2 * int8_bytes(single)
    assert "8-bit activations, oneDNN from 64 tokens" in repr(double)
    assert "7-bit activations)" in repr(single)
