"""`method: "prefix"`: learned keys and values in front of every layer's (prefix tuning).

Files: PEFT's `PREFIX_TUNING` layout without a projection: one `prompt_embeddings`
[virtual, layers * 2 * kv_dim] tensor, key then value for each layer. Served on encoders by the
patched self-attention of app/runtime/prefix_attention.py (per-slot tables in
app/runtime/prompts.py), on decoders from the KV cache (app/runtime/generation.py). Trained by
us on encoders (app/training/prefix.py: PEFT cannot run it on BERT under transformers 5) and by
PEFT on decoders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from peft import PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from pydantic import Field
from torch import nn

from app.errors import bad_request
from app.methods.base import (
    ANY_BASE,
    WEIGHTS,
    Entry,
    Parsing,
    StrictSpec,
    Traits,
    Wrapping,
    spec,
    task_type,
    virtual,
)
from app.registry.finite import as_float32
from app.training.prefix import PrefixModel

if TYPE_CHECKING:
    from app.training.hyperparameters import Hyperparameters


class PrefixConfigSpec(StrictSpec):
    """The fields of PEFT's PrefixTuningConfig that serving acts on."""

    peft_type: Literal["PREFIX_TUNING"]
    num_virtual_tokens: int = Field(ge=1, le=1024)
    prefix_projection: Literal[False] = False


class PrefixFiles:
    """PEFT's PREFIX_TUNING files."""

    peft_type = "PREFIX_TUNING"

    def parse(self, job: Parsing) -> int:
        """PEFT's layout: [virtual, layers * 2 * kv_dim], key then value for each layer."""
        prefix: PrefixConfigSpec = spec(PrefixConfigSpec, job.config)
        base = job.base
        cfg = base.config
        heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        layers, tokens = base.num_layers, prefix.num_virtual_tokens
        emb = as_float32(
            virtual(job.body, tokens, layers * 2 * heads * head_dim),
            runtime_dtype=base.dtype,
            what="prompt_embeddings (prefix keys and values)",
            param=WEIGHTS,
        )
        grid = emb.view(tokens, layers * 2, heads, head_dim).permute(1, 2, 0, 3)
        job.weights.prefix = [
            (grid[2 * i].contiguous(), grid[2 * i + 1].contiguous()) for i in range(layers)
        ]
        return 1


class PrefixTrainer:
    """Ours on encoders (`PrefixModel`), PEFT's on decoders."""

    def wrap(self, job: Wrapping) -> nn.Module:
        """The view plus a learned prefix, saved in PEFT's layout."""
        if job.base.kind != "encoder":
            raise bad_request(
                "unsupported_method", "prefix tuning needs an encoder base", param="method"
            )
        return PrefixModel(
            job.view,
            virtual=job.hp.num_virtual_tokens,
            task_type=task_type(job.task).value,
            base_path=str(job.base.path),
        )

    def causal_lm(
        self, view: nn.Module, hp: Hyperparameters, *, targets: list[str] | None
    ) -> PeftModel:
        """PEFT's prefix tuning over a decoder view."""
        # No projection MLP: the registry and the runtime take the key/values as they are.
        config = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=hp.num_virtual_tokens
        )
        model: PeftModel = get_peft_model(view, config)
        return model


PREFIX = Entry(
    name="prefix",
    # Its attention reads the batch's prefixes from a router cleared once the forward returns,
    # so recomputing a layer in the backward pass would miss them.
    traits=Traits(bases=ANY_BASE, checkpointable=False, learning_rate=1e-2, min_steps=600),
    files=PrefixFiles(),
    trainer=PrefixTrainer(),
    causal=PrefixTrainer(),
)
