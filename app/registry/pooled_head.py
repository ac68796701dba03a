"""A LoRA or IA3 adapter whose head reads pooled hidden states, as a probe's head does.

Sentence encoders are trained so that the attention-masked mean of the last layer is the
sentence embedding, and their BERT pooler is a left-over nothing tuned; so sequence-level
adapters trained here put their head on the pooled features (app/training/pooled.py). Their
files are PEFT's plus the two top-level keys a `linear_probe` config carries, which PEFT
ignores: `layers` (hidden states, concatenated; default [-1]) and `pooling` (`mean`, `cls` or
`max`). With either key present the served head reads `features.pooled(layers, pooling)` of the
adapter's own forward (its deltas applied); without them the adapter reads the pooler, as every
PEFT sequence classifier does.

The keys are checked exactly as a probe's are (ProbeSpec, and layers within the base), and only
for tasks whose head reads one vector per row: a per-token head has nothing to pool.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from app.base import FrozenBase
from app.errors import bad_request
from app.registry.probe_format import ProbeSpec
from app.tasks import Readout, reading

KEYS = ("layers", "pooling")
SEQUENCE_TASKS = reading(Readout.POOLED)


def has_pooled_head(config: dict[str, Any]) -> bool:
    """The config names a pooled read-out (either key present, whatever its value)."""
    return any(key in config for key in KEYS)


def parse_pooled_head(config: dict[str, Any], *, task: str) -> ProbeSpec:
    """The checked `layers`/`pooling` of a pooled-head adapter; a 400 naming the key.

    Call only when `has_pooled_head(config)` and the method's head may read pooled states
    (`Traits.pooled_head`, checked by app/registry/weights.py). Layer bounds need the base:
    see `check_layers`.
    """
    key = next(k for k in KEYS if k in config)
    if task not in SEQUENCE_TASKS:
        raise bad_request(
            "unsupported_task",
            f"adapter_config.json key {key!r} pools each row into one vector; task {task!r} "
            f"has a head per token. Pooled heads serve {list(SEQUENCE_TASKS)}",
            param=key,
        )
    values = {k: config[k] for k in KEYS if k in config}
    values.setdefault("layers", [-1])
    try:
        return ProbeSpec.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else key
        shown = repr(config.get(where))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise bad_request(
            "invalid_adapter_config",
            f"adapter_config.json key {where!r}: {first['msg']} (got {shown})",
            param=where,
        ) from exc


def check_layers(layers: list[int], base: FrozenBase) -> None:
    """Each layer indexes the base's hidden states (the embeddings and every layer, or counted
    back from the end); a 400 naming `layers` and the bounds otherwise."""
    for layer in layers:
        if not -base.num_layers - 1 <= layer <= base.num_layers:
            raise bad_request(
                "invalid_layer",
                f"layer {layer} is outside this base's {base.num_layers} layers (+ embeddings): "
                f"layers lie in [{-base.num_layers - 1}, {base.num_layers}]",
                param="layers",
            )
