"""`base_adapter`: a task LoRA trained on top of a stored (domain) LoRA, stored as one LoRA.

The parent's deltas stay frozen while the task's LoRA and head train over them (both active in
one PEFT model over the training view; the shared base is never touched). The result is stored
as ONE LoRA of rank r1 + r2: `A = [A1; A2]`, `B = [B1, B2]` with each adapter's scale folded
into its B block and `lora_alpha = r` (scale 1), so `B A x = B1 A1 x + B2 A2 x` exactly and the
runtime serves the stack like any other LoRA. A module only one of the two targets gets a zero
block for the other; ranks that differ per module (`rank_pattern`) are zero-padded to the
largest. Only LoRA stacks: other methods' deltas (IA3's scaling, virtual tokens) do not add up
into one LoRA, so their files could not carry the parent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import load, save
from torch import nn

from app.base import FrozenBase
from app.errors import SwitchyardError, bad_request
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE, check_name
from app.registry.weights import AdapterWeights
from app.tasks import LANGUAGE_MODELING, TASKS, canonical_task
from app.training.hyperparameters import Hyperparameters
from app.training.types import TrainingOutcome

PARENT = "parent"  # the frozen adapter's name inside the PEFT model; the trained one is default
TRAINED = "default"
STACKABLE = ("lora", "auto")  # auto: the stack is one more candidate (app/training/auto.py)
PARAM = "base_adapter"


@dataclass(frozen=True)
class ParentLora:
    """A stored LoRA as the trainer stacks on it: per base module, A [r, in] and B [out, r]
    with the parent's scale folded in; `rank` is the largest r over its modules."""

    ref: AdapterRef
    rank: int
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]


class ParentSource(Protocol):
    """What stacking needs of the registry (`Registry` is one)."""

    def meta(self, name: str, version: int | None = None) -> Any:
        """The `AdapterMeta` of a version (latest when None); 404 when unknown."""

    def load_weights(self, name: str, version: int) -> AdapterWeights:
        """A stored version, parsed and checked against the base."""


# ---------------------------------------------------------------- submit time
def check_parent(
    source: ParentSource,
    *,
    name: str,
    version: int | None,
    task: str,
    method: str,
    rank: int,
    base: FrozenBase,
    max_rank: int,
) -> AdapterRef:
    """The stored version a job stacks on (latest when `version` is None); a 4xx names the
    value when it cannot be: unknown (404), not a LoRA, another base, an LM head of the other
    kind, or a stack over max_rank (400)."""
    if method not in STACKABLE:
        raise bad_request(
            "unsupported_method",
            f"base_adapter stacks LoRA on LoRA (one stored LoRA of rank r1 + r2); method "
            f"{method!r} cannot carry the parent's deltas: use one of {list(STACKABLE)}",
            param="method",
        )
    if canonical_task(task) == LANGUAGE_MODELING:
        # Its trainer reads a corpus on the bare base; domain adapters are what others stack on.
        raise bad_request(
            "unsupported_base_adapter",
            f"task {task!r} adapts the base itself and cannot stack on base_adapter {name!r}",
            param="base_adapter",
        )
    meta = _parent_meta(source, name, version)
    shown = f"base_adapter {name!r} v{meta.version}"
    _check_meta(shown, meta, base)
    _check_kind(shown, parent_task=meta.task, task=task, kind=base.kind)
    if meta.rank + rank > max_rank:
        raise bad_request(
            "rank_too_large",
            f"stacked rank {meta.rank} ({shown}) + {rank} (hyperparameters.rank) = "
            f"{meta.rank + rank} > max_rank {max_rank}: the stack is stored as one LoRA",
            param="hyperparameters.rank",
        )
    return AdapterRef(name, meta.version)


def _check_meta(shown: str, meta: Any, base: FrozenBase) -> None:
    """A LoRA, made for this base."""
    if meta.method != "lora":
        raise bad_request(
            "invalid_base_adapter",
            f"{shown} is a {meta.method} adapter; only a LoRA can be stacked on",
            param=PARAM,
        )
    fingerprint = getattr(meta, "base_fingerprint", None)
    if not base.accepts(fingerprint):
        made_for = getattr(meta, "base_model", None) or str(fingerprint)[:23]
        raise bad_request(
            "invalid_base_adapter",
            f"{shown} was made for base {made_for!r}; this service runs {base.name!r}",
            param=PARAM,
        )


def _parent_meta(source: ParentSource, name: str, version: int | None) -> Any:
    try:
        return source.meta(check_name(name), version)
    except SwitchyardError as exc:
        exc.param = PARAM if exc.param == "name" else f"{PARAM}_version"
        raise


def _check_kind(shown: str, *, parent_task: str, task: str, kind: str) -> None:
    """The parent's task runs on this base's kind: a decoder's causal LoRA under an encoder
    task (or the reverse) means it was made on another base (a store kept across bases)."""
    if parent_task not in TASKS:
        return  # a task this build does not know: the fingerprint check decides
    kinds = TASKS[parent_task].kinds
    if kind not in kinds:
        raise bad_request(
            "invalid_base_adapter",
            f"{shown} was trained for task {parent_task!r}, which runs on a "
            f"{' or '.join(sorted(kinds))} base; task {task!r} runs on this {kind} base",
            param=PARAM,
        )


# ---------------------------------------------------------------- training
def load_parent(source: ParentSource, ref: AdapterRef) -> ParentLora:
    """The parent's deltas as the runtime would serve them (scale folded, base paths)."""
    weights = source.load_weights(ref.name, ref.version)
    if weights.method != "lora" or not weights.lora:
        raise bad_request(
            "invalid_base_adapter",
            f"base_adapter {ref.name!r} v{ref.version} is not a LoRA",
            param=PARAM,
        )
    rank = max(a.shape[0] for a, _ in weights.lora.values())
    return ParentLora(ref=ref, rank=rank, lora=dict(weights.lora))


def view_name(base: FrozenBase, path: str) -> str:
    """A base module's name in the training view (app/training/view.py's naming)."""
    return path if base.kind == "decoder" or not base.prefix else f"{base.prefix}.{path}"


def attach_parent(model: nn.Module, parent: ParentLora, base: FrozenBase) -> None:
    """Add the parent as a frozen second LoRA of PEFT model `model`, both active."""
    lora_model: Any = model.base_model
    names = {view_name(base, p): p for p in parent.lora}
    config = LoraConfig(r=parent.rank, lora_alpha=parent.rank, target_modules=sorted(names))
    lora_model.peft_config[PARENT] = config  # how BaseTuner.__init__ registers one
    lora_model.inject_adapter(lora_model.model, PARENT)
    root = lora_model.model
    for name, path in names.items():
        layer = root.get_submodule(name)
        a, b = _padded(parent.lora[path], parent.rank)
        layer.lora_A[PARENT].weight.data.copy_(a)
        layer.lora_B[PARENT].weight.data.copy_(b)
    for module in root.modules():
        if isinstance(module, LoraLayer):
            # Not PeftModel.set_adapter: it would activate one adapter of the head too.
            module.set_adapter([TRAINED, PARENT])
    for name, param in root.named_parameters():
        if f".{PARENT}." in name:
            param.requires_grad_(False)


def _padded(pair: tuple[torch.Tensor, torch.Tensor], rank: int) -> tuple[torch.Tensor, ...]:
    """A (r, in) and B (out, r) zero-padded to `rank`: zero rows add nothing to B A."""
    a, b = pair
    extra = rank - a.shape[0]
    if extra == 0:
        return a, b
    return (
        torch.cat([a, a.new_zeros(extra, a.shape[1])]),
        torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1),
    )


# ---------------------------------------------------------------- the stored stack
def stack_files(files: dict[str, bytes], parent: ParentLora, base: FrozenBase) -> dict[str, bytes]:
    """The trained adapter's PEFT files with the parent folded in: one LoRA of rank r1 + r2."""
    config = json.loads(files[CONFIG_FILE])
    tensors = load(files[WEIGHTS_FILE])
    trained, rest = _trained_pairs(tensors, config, base)
    r1, r2 = parent.rank, config["r"]
    total = r1 + r2
    out = dict(rest)
    for path in sorted(set(trained) | set(parent.lora)):
        a1, b1 = _padded(parent.lora[path], r1) if path in parent.lora else (None, None)
        a2, b2 = trained.get(path, (None, None))
        d_in, d_out = base.linear_shapes[path]
        a = torch.cat([_or_zeros(a1, (r1, d_in)), _or_zeros(a2, (r2, d_in))])
        b = torch.cat([_or_zeros(b1, (d_out, r1)), _or_zeros(b2, (d_out, r2))], dim=1)
        key = f"base_model.model.{view_name(base, path)}"
        out[f"{key}.lora_A.weight"] = a.contiguous()
        out[f"{key}.lora_B.weight"] = b.contiguous()
    union = sorted(view_name(base, p) for p in set(trained) | set(parent.lora))
    config.update(
        r=total,
        lora_alpha=total,  # scale 1: each block's own scale is already in its B
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=union,
    )
    return {**files, CONFIG_FILE: json.dumps(config).encode(), WEIGHTS_FILE: save(out)}


def _trained_pairs(
    tensors: dict[str, torch.Tensor], config: dict[str, Any], base: FrozenBase
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """The trained LoRA per base path (its scale folded into B), and every other tensor."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise SwitchyardError(500, "internal_error", "a stacked run trained per-module ranks")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    halves: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, tensor in tensors.items():
        module, found, tail = key.partition(".lora_")
        if not found:
            rest[key] = tensor
            continue
        halves.setdefault(base.module_path(module), {})[tail[0]] = tensor.float()
    pairs = {path: (ab["A"], ab["B"] * scale) for path, ab in halves.items()}
    return pairs, rest


def _or_zeros(tensor: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    return tensor if tensor is not None else torch.zeros(shape)


# ---------------------------------------------------------------- the job's result
STACKED = "lora+base_adapter"  # auto's candidate: LoRA on top of the job's base_adapter


def stacked(
    outcome: TrainingOutcome,
    parent: ParentLora,
    base: FrozenBase,
    *,
    metric: str,
    without: float | None,
) -> TrainingOutcome:
    """A stacked run's outcome: files folded into one LoRA, lineage and the domain effect."""
    outcome.files = stack_files(outcome.files, parent, base)
    outcome.parent = parent.ref
    outcome.domain_effect = {
        "with": outcome.metrics.get(metric),
        "without": without,
        "metric": metric,
        "base_adapter": {"adapter": parent.ref.name, "version": parent.ref.version},
    }
    stored = int(json.loads(outcome.files[CONFIG_FILE])["r"])
    outcome.hyperparameters = {**outcome.hyperparameters, "stacked_rank": stored}
    return outcome


def task_rank(hyperparameters: dict[str, Any]) -> int:
    """The task LoRA's rank as the job gives it (the schema's default when it does not)."""
    value = hyperparameters.get("rank")
    return value if isinstance(value, int) else int(Hyperparameters.model_fields["rank"].default)
