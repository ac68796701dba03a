"""An int8 frozen base for CPU serving (`SWITCHYARD_DTYPE=int8`).

Each linear layer of the serving base runs torch's dynamic int8 kernel (weights quantized per
output channel once, activations per call). The float weights stay: training views share them
(app/training/view.py), the fingerprint is the float base's, so adapters trained on the float
base load unchanged, and every delta (LoRA, IA3, prompt, prefix, heads) stays in float.

Activations use the full 8-bit range where the CPU has VNNI (or AMX) int8 instructions. torch's
module form always quantizes them to 7 bits (`reduce_range=True`), because without VNNI the
kernel's pairwise u8 x s8 products are summed in int16 and a full-range pair can saturate; with
VNNI they accumulate in int32, and the extra bit halves the activation error for the same
speed (bench/README.md, "int8 activation range").

Where the CPU has AMX int8 tiles, calls of many tokens run oneDNN's kernels instead of
fbgemm's: at 1152 tokens oneDNN ran MiniLM's layers 1.4-4.4x faster, about even at 200, and
fbgemm was faster for a few tokens (bench/README.md, "int8 kernels by call size"). Each layer
then holds both packings (the int8 weights twice: 11 MB more for MiniLM).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.ao.quantization import per_channel_dynamic_qconfig

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of int8 dot-product instructions that accumulate in int32.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
AMX_FLAG = "amx_int8"
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Int8Plan:
    """How the int8 layers run: 8-bit activations (`full_range`, needs VNNI) and from how many
    tokens a call takes oneDNN's kernels (`onednn_from_tokens`; 0: never, fbgemm only)."""

    full_range: bool = False
    onednn_from_tokens: int = 0


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo); empty where unknown,
    which keeps the safe choices: 7-bit activations, fbgemm only."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, flags = line.partition(":")
        if key.strip() == "flags":
            return frozenset(flags.split())
    return frozenset()


def has_vnni(flags: frozenset[str]) -> bool:
    """Whether these CPU flags name a VNNI or AMX int8 instruction set (int32 accumulation)."""
    return not VNNI_FLAGS.isdisjoint(flags)


def cpu_has_vnni(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU has a VNNI or AMX int8 instruction set."""
    return has_vnni(cpu_flags(cpuinfo))


def int8_linear(x: torch.Tensor, kernel: DynamicInt8Linear, *, full_range: bool) -> torch.Tensor:
    """The dynamic int8 kernel's output for `x`, activations in 8 bits when `full_range`."""
    out: torch.Tensor = torch.ops.quantized.linear_dynamic(
        x, kernel._packed_params._packed_params, reduce_range=not full_range
    )
    return out.to(x.dtype)


class Int8Linear(nn.Linear):
    """A frozen `nn.Linear` whose forward is the dynamic int8 kernel.

    It stays an `nn.Linear` with the float `weight` and `bias` parameters (shared, not copied)
    so the runtime wraps it like any other linear layer and code that reads `.weight` (dtype
    probes, IA3 tables, tied heads) still sees float tensors.
    """

    def __init__(self, linear: nn.Linear, plan: Int8Plan | None = None) -> None:
        # nn.Module's init only: nn.Linear's would allocate a second float weight.
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.plan = plan or Int8Plan()
        self.int8 = _quantize(linear, engine=None)
        # oneDNN's packing of the same weights, for calls of many tokens (None: not used).
        self.int8_large = (
            _quantize(linear, engine="onednn") if self.plan.onednn_from_tokens else None
        )
        self._large_from = self.plan.onednn_from_tokens * self.in_features  # in elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.int8
        if self.int8_large is not None and x.numel() >= self._large_from:
            kernel = self.int8_large
        return int8_linear(x, kernel, full_range=self.plan.full_range)

    def extra_repr(self) -> str:
        bits = 8 if self.plan.full_range else 7
        large = self.plan.onednn_from_tokens
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int8 ({bits}-bit activations"
            + (f", oneDNN from {large} tokens)" if self.int8_large is not None else ")")
        )


class _Int8Forward(torch.autograd.Function):
    """The int8 kernel's output; for the input's gradient, the float weight (QLoRA's rule: the
    forward is the quantized layer's, the backward goes through the weight it stands for)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        served: Int8Linear,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return served(x.detach())

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad @ weight.to(grad.dtype), None, None


class Int8TrainLinear(nn.Linear):
    """A training view's frozen linear that runs the serving layer's int8 kernel (shared, not
    copied), so an adapter trained on an int8 base learns the function it will be served
    with; gradients reach the layers below through the float weight."""

    def __init__(self, linear: nn.Linear, served: Int8Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        # Not a child module: the served layer belongs to the serving base, and a training
        # view's state dict (checkpoints, the stored adapter) must not list its packed buffers.
        object.__setattr__(self, "served", served)

    served: Int8Linear

    @property
    def kernel(self) -> DynamicInt8Linear:
        """The serving layer's packed int8 kernel (shared, not copied)."""
        return self.served.int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            out: torch.Tensor = _Int8Forward.apply(x, self.weight, self.served)
            return out
        # Nothing below needs a gradient (the frozen weight takes none): the kernel alone.
        return self.served(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (train)"


def int8_training_view(view: nn.Module, served: nn.Module, paths: list[str], *, prefix: str) -> int:
    """Give a training view the serving base's int8 kernels at `paths` (the base's int8
    layers; `prefix` is where the base sits in the view). Returns how many were given."""
    count = 0
    for path in paths:
        layer = served.get_submodule(path)
        layer = getattr(layer, "base_layer", layer)  # the runtime's multi-adapter wrapper
        target_path = prefix + path
        target = view.get_submodule(target_path)
        if not isinstance(layer, Int8Linear) or type(target) is not nn.Linear:
            continue
        parent_path, _, attr = target_path.rpartition(".")
        parent = view.get_submodule(parent_path) if parent_path else view
        setattr(parent, attr, Int8TrainLinear(target, layer))
        count += 1
    return count


@contextmanager
def _packing_engine(engine: str | None) -> Iterator[None]:
    """Pack under `engine` (None: the current one); a packing runs under any engine after."""
    previous = torch.backends.quantized.engine
    if engine is not None:
        torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _quantize(linear: nn.Linear, *, engine: str | None) -> DynamicInt8Linear:
    float_copy = nn.Linear(
        linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"
    )
    float_copy.weight = nn.Parameter(linear.weight.detach().float(), requires_grad=False)
    if linear.bias is not None:
        float_copy.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False)
    # Per output channel: one scale per row keeps the error of rows with small weights low.
    float_copy.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    with warnings.catch_warnings(), _packing_engine(engine):
        # torch marks eager-mode quantization deprecated in favour of torchao, whose CPU int8
        # path measured slower here (bench/README.md, issue 15); the kernels are the same.
        warnings.simplefilter("ignore")
        quantized: DynamicInt8Linear = DynamicInt8Linear.from_float(float_copy)
    return quantized


def quantize_linears(
    model: nn.Module, *, skip: frozenset[str] = frozenset(), plan: Int8Plan | None = None
) -> list[str]:
    """Swap every float `nn.Linear` of `model` (but the paths in `skip`) for an `Int8Linear`.

    `plan` None: torch's defaults (7-bit activations, fbgemm only). Returns the swapped paths.
    Only CPU tensors can be quantized this way.
    """
    plan = plan or Int8Plan()
    swapped = []
    for path, module in list(model.named_modules()):
        if type(module) is not nn.Linear or path in skip:
            continue
        if module.weight.device.type != "cpu":
            raise ValueError(f"int8 base: {path} is on {module.weight.device}, int8 is CPU-only")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, Int8Linear(module, plan))
        swapped.append(path)
    log.info(
        "int8 base: %d linear layers quantized, %d-bit activations, oneDNN kernels %s",
        len(swapped),
        8 if plan.full_range else 7,
        f"from {plan.onednn_from_tokens} tokens" if plan.onednn_from_tokens else "off",
    )
    return swapped


def int8_bytes(model: nn.Module) -> int:
    """Bytes the int8 copies add (weights plus per-channel scales), for memory reports."""
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            packings = 1 if module.int8_large is None else 2
            total += packings * (
                module.out_features * module.in_features + module.out_features * 16
            )
    return total
