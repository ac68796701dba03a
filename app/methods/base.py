"""What every method plug-in provides, and the parsed form the runtime copies into a slot.

A method is three things, after PEFT's `tuners/<method>/{config,layer,model}.py`:
- its files (`Files`): the PEFT `adapter_config.json` it writes and the tensors it holds,
  checked against the base and turned into `AdapterWeights`;
- how it is served: the parts of `AdapterWeights` it fills are what the runtime's generic slot
  machinery reads (LoRA pairs and IA3 vectors: app/runtime/layers.py; prompt embeddings:
  app/runtime/prompts.py; prefix keys/values: app/runtime/prefix_attention.py);
- how it is trained (`Trainer`): the trainable model wrapped around the training view.
`Traits` say which bases and tasks it supports and what the trainer must know about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from peft import PeftModel, TaskType
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.registry.pooled_head import check_layers
from app.registry.probe_format import ProbeSpec
from app.tasks import Readout, get_task

if TYPE_CHECKING:  # the hyperparameters module may itself read the method registry
    from app.training.hyperparameters import Hyperparameters

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ENCODER_ONLY = frozenset({"encoder"})
ANY_BASE = frozenset({"encoder", "decoder"})


@dataclass
class AdapterWeights:
    """A parsed adapter, ready to copy into a runtime slot."""

    method: str
    task: str
    labels: list[str]
    # module path inside the backbone -> (A [r, in], B [out, r] with the LoRA scale folded in)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    # IA3: module path -> scaling vector; input-side ([in]) for feed-forward modules, else [out]
    ia3: dict[str, torch.Tensor] = field(default_factory=dict)
    ia3_input_side: set[str] = field(default_factory=set)
    # prompt tuning: [virtual tokens, hidden] input embeddings prepended to each row
    prompt: torch.Tensor | None = None
    # prefix tuning: per layer (key, value), each [kv_heads, virtual tokens, head_dim]
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # Set (probes, and LoRA/IA3 with a pooled head): the head reads these hidden states,
    # pooled and concatenated, instead of the pooler (app/registry/pooled_head.py).
    probe_layers: list[int] = field(default_factory=list)
    pooling: str = "mean"
    rank: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = [t for pair in self.lora.values() for t in pair] + list(self.head.values())
        tensors += list(self.ia3.values()) + [t for kv in self.prefix for t in kv]
        tensors += [self.prompt] if self.prompt is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class Traits:
    """What the rest of the service asks about a method instead of comparing its name."""

    # Base kinds it trains and serves on; "decoder" in it means it can do generation.
    bases: frozenset[str] = ENCODER_ONLY
    # Tasks it can train (None: every task of its bases), and how a refusal says so.
    tasks: frozenset[str] | None = None
    tasks_note: str = ""
    # Its head may read pooled hidden states (app/registry/pooled_head.py, training/pooled.py).
    pooled_head: bool = False
    # The adapter is its head alone; its config names the layers the head reads.
    head_only: bool = False
    # Its virtual tokens sit in front of the text, so they take the base's positions.
    virtual_positions: bool = False
    # Activation checkpointing may wrap its forward (not prefix: its router is per forward).
    checkpointable: bool = True
    # It adapts the linear layers `target_modules` names, so `upper_layers` may narrow them.
    layer_targets: bool = False
    # A training-only method writes another method's files, marked with its own name.
    stored_as: str | None = None
    # The learning rate a job trains at unless given one, and the fewest optimizer steps a run
    # should take: new parameters on a frozen model (prompt, prefix) start far from useful and
    # need more steps than LoRA or IA3, whose untrained state is the base itself.
    learning_rate: float = 1e-3
    min_steps: int = 300


@dataclass(frozen=True)
class Parsing:
    """One adapter's files being checked: what `Files.parse` reads, and the weights it fills."""

    config: dict[str, Any]
    body: dict[str, torch.Tensor]  # the tensors less the head
    base: FrozenBase
    weights: AdapterWeights
    max_rank: int


@dataclass(frozen=True)
class Wrapping:
    """What `Trainer.wrap` builds on: the training view (its head already initialised), the
    parsed hyperparameters, and the view's module names `target_modules` resolved to (None:
    the method's default; app/training/targets.py)."""

    view: nn.Module
    hp: Hyperparameters
    task: str
    base: FrozenBase
    targets: list[str] | None = None


class Files(Protocol):
    """The files side (PEFT's `config.py`): `peft_type` and the check of config and tensors."""

    peft_type: str

    def parse(self, job: Parsing) -> int:
        """Fill `job.weights` from `job.body`; a 400 naming the problem. Returns how many
        hidden-state vectors the head reads concatenated (1 but for probes)."""
        ...


class Trainer(Protocol):
    """The training side (PEFT's `model.py`): the trainable model around the training view."""

    def wrap(self, job: Wrapping) -> nn.Module:
        """The trainable model over `job.view`."""
        ...


class Causal(Protocol):
    """Generation's training side: PEFT's causal-LM model over the decoder view."""

    def causal_lm(
        self, view: nn.Module, hp: Hyperparameters, *, targets: list[str] | None
    ) -> PeftModel:
        """PEFT's causal-LM model of this method over `view`."""
        ...


class Method(Protocol):
    """One value of a job's `method`: its name, traits, files and trainers.

    `files` is None for training-only methods (they write `traits.stored_as`'s files) and for
    selectors (auto: the winner's). `trainer` is None where a run of its own trains it (probe,
    contrastive: app/training/trainer.py) and for a selector; `causal` is None for a method
    that cannot train generation by itself.
    """

    @property
    def name(self) -> str: ...

    @property
    def traits(self) -> Traits: ...

    @property
    def files(self) -> Files | None: ...

    @property
    def trainer(self) -> Trainer | None: ...

    @property
    def causal(self) -> Causal | None: ...


@dataclass(frozen=True)
class Entry:
    """A `Method` made of parts: what each method module registers."""

    name: str
    traits: Traits
    files: Files | None = None
    trainer: Trainer | None = None
    causal: Causal | None = None


def task_type(task: str) -> TaskType:
    """PEFT's task type of an encoder task: a head per token, or one per row."""
    per_token = get_task(task).readout is Readout.TOKENS
    return TaskType.TOKEN_CLS if per_token else TaskType.SEQ_CLS


class StrictSpec(BaseModel):
    """PEFT adds fields every release, so unknown keys pass; the ones we act on are strict."""

    model_config = ConfigDict(extra="allow", strict=True)


def spec(model: type[BaseModel], config: dict[str, Any]) -> Any:
    """`config` validated by `model`; a 400 naming the first bad field."""
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise bad_request(
            "invalid_adapter_config",
            f"adapter_config.json field {where!r}: {first['msg']}",
            param=CONFIG,
        ) from exc


def module_path(base: FrozenBase, key: str, seen: dict[str, Any]) -> str:
    """The backbone path `key` targets; a second key for one path is refused, naming it."""
    path = base.module_path(key)
    if path in seen:
        raise bad_request(
            "duplicate_tensor", f"two tensor groups target module {path!r}", param=WEIGHTS
        )
    return path


def virtual(body: dict[str, torch.Tensor], tokens: int, width: int) -> torch.Tensor:
    """The one `prompt_embeddings` tensor of a prompt-learning adapter, shape-checked."""
    extra = sorted(set(body) - {"prompt_embeddings"})
    if extra or "prompt_embeddings" not in body:
        raise bad_request(
            "unknown_tensor",
            f"a prompt-learning adapter holds prompt_embeddings only; found {sorted(body)[:5]}",
            param=WEIGHTS,
        )
    emb = body["prompt_embeddings"]
    if tuple(emb.shape) != (tokens, width):
        raise bad_request(
            "shape_mismatch",
            f"prompt_embeddings {tuple(emb.shape)} != ({tokens}, {width}) for this base",
            param=WEIGHTS,
        )
    return emb


def read_pooled(pooled: ProbeSpec, base: FrozenBase, weights: AdapterWeights) -> int:
    """Where the head reads (a probe's, or a pooled LoRA/IA3's); how many layers it
    concatenates."""
    check_layers(pooled.layers, base)
    weights.probe_layers = list(pooled.layers)
    weights.pooling = pooled.pooling
    return len(pooled.layers)
