"""`method: "linear_probe"`: a head on pooled hidden states of the frozen base, nothing else.

Files: a LoRA config in PEFT's clothes, marked `"switchyard_method": "linear_probe"`, whose
only trained part is the head, plus one all-zero LoRA pair so that PEFT loads it
(app/registry/probe_format.py); probes stored before that format (`peft_type: LINEAR_PROBE`,
the head only) still load. Served without a slot: the head reads `features.pooled(layers,
pooling)` of the base's forward. Trained by a run of its own (app/training/probe.py), encoders
only.
"""

from __future__ import annotations

from typing import Literal

from app.methods.base import Entry, Parsing, Traits, read_pooled, spec
from app.registry.probe_format import ProbeSpec, check_probe_body, is_probe_in_lora


class ProbeConfigSpec(ProbeSpec):
    """How probes were stored before they loaded in PEFT."""

    peft_type: Literal["LINEAR_PROBE"]


class ProbeFiles:
    """A probe's files, either format."""

    peft_type = "LINEAR_PROBE"

    def parse(self, job: Parsing) -> int:
        """Check a probe's layers; returns how many layers its head concatenates."""
        config = job.config
        probe: ProbeSpec = spec(ProbeSpec if is_probe_in_lora(config) else ProbeConfigSpec, config)
        check_probe_body(job.body)
        return read_pooled(probe, job.base, job.weights)


LINEAR_PROBE = Entry(
    name="linear_probe", traits=Traits(head_only=True, learning_rate=3e-3), files=ProbeFiles()
)
