"""Hyperparameters: validated strictly, with defaults picked from the data, not fixed.

DESIGN.md's quality notes: LoRA's usual settings lose to a frozen-feature probe on many-label
tasks unless the head starts from a probe and learns faster than the adapter. So the head is
initialised by a logistic regression on frozen features (LP-FT) and trained at 3x the
adapter's learning rate; batch size, epochs and evaluation cadence follow the number of rows,
max_length the token lengths of the rows. README.md, "Training defaults", explains them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from app.errors import bad_request
from app.methods import METHODS

# Bounds of what a job may ask for. Past these a value is a typo or an attack, never a recipe:
# a seed must fit every generator it seeds (NumPy's are 32-bit), and the LoRA scale
# alpha / rank multiplies every update (PEFT's default is 2; common recipes stay under 64).
MAX_SEED = 2**32 - 1
MAX_LORA_SCALE = 256.0
MAX_STEPS = 10_000_000
MAX_TARGETS = 1024
TargetName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Hyperparameters(BaseModel):
    """Every knob a training job accepts; None means 'pick from the data'."""

    # Strict: `true` is not 1 and "3" is not 3, JSON's numbers are taken as they are typed,
    # and NaN or infinity is never a setting.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    epochs: int | None = Field(None, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=512)
    learning_rate: float | None = Field(None, gt=0, le=1)
    head_learning_rate: float | None = Field(None, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    rank: int = Field(8, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0, le=1024 * MAX_LORA_SCALE)
    dropout: float = Field(0.05, ge=0, lt=1)
    # A string is a regular expression over whole module names, a list matches name suffixes
    # (PEFT's rules); app/training/targets.py resolves either against the base.
    target_modules: (
        TargetName | Annotated[list[TargetName], Field(min_length=1, max_length=MAX_TARGETS)]
    ) = "all-linear"
    # LoRA / IA3 on an encoder: adapt only the top N layers; the layers below are then computed
    # once per run, not at every step (app/training/lower_cache.py).
    upper_layers: int | None = Field(None, ge=1, le=1024)
    num_virtual_tokens: int = Field(20, ge=1, le=256)
    max_length: int | None = Field(None, ge=8, le=1_000_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    early_stopping_patience: int | None = Field(2, ge=1, le=10_000)
    eval_every_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    log_every_steps: int = Field(10, ge=1, le=MAX_STEPS)
    head_init: Literal["probe", "random"] = "probe"
    # linear_probe picks its layers on validation unless given (see probe.py).
    layers: list[Annotated[int, Field(ge=-1024, le=1024)]] = Field(
        default_factory=lambda: [-1], min_length=1, max_length=16
    )
    pooling: Literal["mean", "cls", "max"] = "mean"
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    # How the schedule and the checkpoint are chosen (app/training/selection.py); "auto" picks
    # by the number of validation rows.
    selection: Literal[
        "auto", "cross_validation", "fixed", "validation_loss", "validation_metric"
    ] = "auto"
    # method "auto": the time its candidates may take together (the winner's final run aside);
    # language_modeling: when given, the time the run may train
    budget_seconds: float = Field(600.0, ge=1, le=7 * 24 * 3600)
    # language_modeling (app/training/language_modeling.py): the share of tokens masked
    # (encoder), whole words masked together, the MLM head stored with the adapter, and the
    # tokens consecutive windows of a document share (None: max_length // 8).
    mask_probability: float = Field(0.15, gt=0, lt=1)
    whole_word_mask: bool = False
    keep_head: bool = False
    stride: int | None = Field(None, ge=0, le=1_000_000)


def parse_hyperparameters(
    raw: dict[str, Any], *, max_rank: int, max_tokens: int
) -> Hyperparameters:
    """Validate user hyperparameters; a 400 names the field and the limit."""
    try:
        hp = Hyperparameters.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    if hp.rank > max_rank:
        raise bad_request(
            "invalid_hyperparameter",
            f"rank {hp.rank} > max_rank {max_rank}",
            param="hyperparameters.rank",
        )
    if hp.max_length is not None and hp.max_length > max_tokens:
        raise bad_request(
            "invalid_hyperparameter",
            f"max_length {hp.max_length} > max_input_tokens {max_tokens}",
            param="hyperparameters.max_length",
        )
    if hp.alpha is not None and hp.alpha / hp.rank > MAX_LORA_SCALE:
        # What the adapter computes is alpha / rank times B: bound that, not alpha alone.
        raise bad_request(
            "invalid_hyperparameter",
            f"alpha {hp.alpha:g} / rank {hp.rank} = LoRA scale {hp.alpha / hp.rank:g} "
            f"> limit {MAX_LORA_SCALE:g}",
            param="hyperparameters.alpha",
        )
    return hp


def _invalid(exc: ValidationError) -> Exception:
    """The first schema error as a 400 naming the field (not pydantic's union branch)."""
    errors = exc.errors()
    # Of a union's branches, the one whose type fit says more ("at least 1 item") than the
    # others' type mismatches ("should be a valid string").
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    loc = [str(p) for p in first["loc"]]
    field = loc[0] if loc else "hyperparameters"
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    where = ".".join([field, *(p for p in loc[1:] if p.isdigit())])
    return bad_request(
        "invalid_hyperparameter",
        f"hyperparameter {where!r}: {first['msg']} (got {shown})",
        param=f"hyperparameters.{field}",
    )


# Per method (app/methods/, `Traits`): the learning rate, and the fewest optimizer steps a run
# should take.
_LEARNING_RATE = {name: m.traits.learning_rate for name, m in METHODS.items()}
_MIN_STEPS = {name: m.traits.min_steps for name, m in METHODS.items()}
_DEFAULT_MIN_STEPS = 300
_MAX_EPOCHS = 20
# Most steps between two evaluations: big data gets several evaluations an epoch, so the best
# checkpoint and early stopping have more than three points to choose from.
_MAX_EVAL_INTERVAL = 300


def default_learning_rate(method: str) -> float:
    """The learning rate a job of `method` trains at unless it is given one."""
    return _LEARNING_RATE.get(method, 1e-3)


def fill_defaults(
    hp: Hyperparameters, *, method: str, rows: int, lengths: list[int], max_tokens: int
) -> Hyperparameters:
    """A copy of `hp` with what the user left unset resolved from the method and the data
    (see README, "Training defaults"); fields the user gave are never changed. `hp`, the
    parsed request, stays as it was: each method of a job (`auto`) fills its own copy."""
    given = set(hp.model_fields_set)  # before the assignments below add theirs
    hp = hp.model_copy(deep=True)
    if hp.learning_rate is None:
        hp.learning_rate = default_learning_rate(method)
    if hp.head_learning_rate is None:
        # A new head learns slowly at the adapter's rate (DESIGN.md, quality notes).
        hp.head_learning_rate = max(3 * hp.learning_rate, 3e-3)
    if hp.alpha is None:
        hp.alpha = float(2 * hp.rank)
    if "dropout" not in given and rows >= 1000:
        # LoRA dropout regularises small data; past that it mostly costs: on a CPU, its random
        # masks were 18% of a MiniLM step, and each one keeps a copy of a layer's input.
        hp.dropout = 0.0
    if "batch_size" not in given:
        # Small data: smaller batches, so that a few hundred rows still give enough updates.
        hp.batch_size = 32 if rows >= 1000 else 16 if rows >= 200 else 8
    per_epoch = max(1, math.ceil(rows / hp.batch_size))
    if hp.epochs is None:
        wanted = math.ceil(_MIN_STEPS.get(method, _DEFAULT_MIN_STEPS) / per_epoch)
        hp.epochs = min(_MAX_EPOCHS, max(2 if rows >= 30_000 else 3, wanted))
    if hp.eval_every_steps is None and per_epoch > _MAX_EVAL_INTERVAL:
        hp.eval_every_steps = math.ceil(per_epoch / math.ceil(per_epoch / _MAX_EVAL_INTERVAL))
    if "early_stopping_patience" not in given and hp.eval_every_steps:
        # Patience counts evaluations; keep it about two epochs when they are more frequent.
        hp.early_stopping_patience = max(2, 2 * per_epoch // hp.eval_every_steps)
    if hp.max_length is None:
        ordered = sorted(lengths) or [max_tokens]
        p98 = ordered[min(len(ordered) - 1, int(0.98 * len(ordered)))]
        hp.max_length = int(min(max_tokens, max(16, p98)))
    return hp
