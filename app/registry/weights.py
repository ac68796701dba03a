"""Turn checked adapter files into `AdapterWeights`: what the runtime copies into a slot.

The same function runs on upload (so a bad adapter is refused before it is stored) and when
the runtime loads a stored version (so a file corrupted on disk fails only its own requests).
Every tensor name must map to a module of this base, with the shape that module needs. What
each method's files hold is checked by its plug-in (app/methods/); the head, the task and the
pooled read-out are checked here, the same for every method.
"""

from __future__ import annotations

from typing import Any

import torch

from app.base import FrozenBase
from app.errors import bad_request
from app.methods import METHODS, PEFT_TYPES, AdapterWeights, Method, method_of_files
from app.methods.base import CONFIG, Parsing, read_pooled
from app.registry.heads import HEAD_MODULES, check_head, normalise_key, normalised, split_head
from app.registry.masked_head import split_masked_head
from app.registry.pooled_head import KEYS, has_pooled_head, parse_pooled_head
from app.tasks import LANGUAGE_MODELING, TASKS

__all__ = ["PEFT_TYPES", "AdapterWeights", "build_weights"]

# Older callers (tests/unit/method_adapters.py) import the key rule from here.
_normalise_key = normalise_key


def build_weights(
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    base: FrozenBase,
    *,
    task: str,
    labels: list[str],
    max_rank: int,
) -> AdapterWeights:
    """Check config and tensors against the base and the task; raise a 400 naming the problem."""
    if task not in TASKS:
        raise bad_request(
            "invalid_task", f"task {task!r} is not one of {sorted(TASKS)}", param="task"
        )
    method = method_of_files(config)
    if method is None or method.files is None:
        raise bad_request(
            "unsupported_method",
            f"peft_type {str(config.get('peft_type'))[:40]!r} is not one of {sorted(PEFT_TYPES)}",
            param=CONFIG,
        )
    tensors = normalised(tensors)
    masked: dict[str, torch.Tensor] = {}
    if task == LANGUAGE_MODELING:
        masked, tensors = split_masked_head(tensors, base=base)
    head_module, head = split_head(tensors)
    body = {k: v for k, v in tensors.items() if k.split(".")[0] not in HEAD_MODULES}
    weights = AdapterWeights(method=method.name, task=task, labels=labels, config=config)
    parsing = Parsing(config=config, body=body, base=base, weights=weights, max_rank=max_rank)
    width = method.files.parse(parsing)
    width *= _pooled_width(config, base, weights, method)
    weights.head = masked or check_head(
        head, module=head_module, task=task, labels=labels, in_features=width * base.hidden_size
    )
    return weights


def _pooled_width(
    config: dict[str, Any], base: FrozenBase, weights: AdapterWeights, method: Method
) -> int:
    """A LoRA/IA3 head over pooled hidden states (app/registry/pooled_head.py): how many
    layers it concatenates; 1 for every other adapter (a probe's parse reads its own)."""
    if method.traits.head_only or not has_pooled_head(config):
        return 1
    if not method.traits.pooled_head:
        key = next(k for k in KEYS if k in config)
        pooled = [m.name for m in METHODS.values() if m.traits.pooled_head and m.files]
        raise bad_request(
            "invalid_adapter_config",
            f"adapter_config.json key {key!r} is read for {pooled} adapters and "
            f"linear probes; a {method.name} adapter's head reads the pooler",
            param=key,
        )
    spec = parse_pooled_head(config, task=weights.task)
    return read_pooled(spec, base, weights)
