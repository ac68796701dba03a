"""A trainable view of the frozen base that shares its tensors: training adds no base copy.

The task model's skeleton is built on the meta device (no memory), then every base parameter
and buffer is assigned by reference. Only the new head is materialised. The view's modules
are distinct objects from the serving modules, so PEFT may inject into them freely while the
runtime keeps serving from the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from app.base import FrozenBase
from app.errors import bad_request
from app.quantized import int8_training_view
from app.tasks import HEAD_TASKS, Readout, check_base


def build_view(base: FrozenBase, *, task: str, num_labels: int) -> PreTrainedModel:
    """The task model (`BertForSequenceClassification`, ...) over the base's own tensors."""
    config = base.config.__class__.from_dict(base.config.to_dict())
    config.num_labels = max(num_labels, 1)
    factory = _factory(base, task)
    head = HEAD_TASKS.get(task)  # None for generation: the causal LM's head is the base's
    if head is not None and head.objective.problem_type is not None:
        config.problem_type = head.objective.problem_type
    with torch.device("meta"):
        view = factory.from_config(config)
    prefix = "" if base.kind == "decoder" else base.prefix + "."
    shared = {**{prefix + k: v for k, v in base.parameters.items()}, **_buffers(base, prefix)}
    for name, _tensor in list(view.named_parameters()) + list(view.named_buffers()):
        if name in shared:
            _set(view, name, shared[name], is_param=isinstance(_tensor, nn.Parameter))
    if _tied(base, factory) and getattr(config, "tie_word_embeddings", False):
        # A tied LM head is not among the base's named parameters (deduplicated); re-tie it to
        # the shared embedding, or it would stay on the meta device.
        view.tie_weights()
    for name, tensor in list(view.named_parameters()) + list(view.named_buffers()):
        if tensor.device.type == "meta":
            if name.split(".")[0] not in ("classifier", "score", "cls"):
                raise bad_request("unsupported_base", f"cannot build a training view: {name} unset")
            _set(view, name, _init_like(tensor, base), is_param=True)
    if factory is AutoModelForMaskedLM:
        view.tie_weights()  # the new head's decoder bias is its `predictions.bias`
    if base.int8_layers:
        # QLoRA-style on an int8 base (`SWITCHYARD_DTYPE=int8`): trained through the served
        # int8 forward, an adapter learns the function it is served with (bench/README.md
        # measures what that buys: not a dependable recovery of the int8 accuracy loss).
        int8_training_view(view, base.model, base.int8_layers, prefix=prefix)
    view.to(base.device)
    for name, param in view.named_parameters():
        param.requires_grad_(name.split(".")[0] in ("classifier", "score"))
    return view


_FACTORIES: dict[Readout, Any] = {
    Readout.TEXT: AutoModelForCausalLM,
    Readout.TOKENS: AutoModelForTokenClassification,
    Readout.POOLED: AutoModelForSequenceClassification,
    Readout.MASKED: AutoModelForMaskedLM,  # language_modeling on an encoder
}


def _tied(base: FrozenBase, factory: Any) -> bool:
    """Views whose output layer may be the input embeddings: an LM head."""
    return base.kind == "decoder" or factory is AutoModelForMaskedLM


def _factory(base: FrozenBase, task: str) -> Any:
    readout = check_base(task, base.kind).readout
    if readout not in _FACTORIES:
        raise bad_request("unsupported_task", f"task {task!r} is not trained", param="task")
    return _FACTORIES[readout]


def _buffers(base: FrozenBase, prefix: str) -> dict[str, torch.Tensor]:
    # Buffers (position ids) live on modules the runtime never wraps, so names are stable.
    return {prefix + k: v for k, v in base.model.named_buffers() if "lora_" not in k}


def _set(root: nn.Module, name: str, tensor: torch.Tensor, *, is_param: bool) -> None:
    module_path, _, attr = name.rpartition(".")
    module = root.get_submodule(module_path) if module_path else root
    if is_param:
        value = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)
        module._parameters[attr] = value
    else:
        module._buffers[attr] = tensor


def _init_like(meta: torch.Tensor, base: FrozenBase) -> torch.Tensor:
    tensor = torch.empty(meta.shape, dtype=torch.float32, device=base.device)
    if tensor.dim() > 1:
        nn.init.normal_(tensor, std=0.02)
    else:
        nn.init.zeros_(tensor)
    return tensor
