"""The adapter methods, one module each, and the one list of them: `METHODS`.

Each module (lora, prefix, prompt, ia3, linear_probe) registers an `Entry`: its `Traits`
(bases, tasks, what the trainer must know), its `Files` (PEFT config and tensors checked into
`AdapterWeights`), and its `Trainer` (the model wrapped around the training view) and `Causal`
(generation's). Two entries are not file formats: `contrastive` is training-only (it writes a
pooled-head LoRA marked with its name) and `auto` is a selector (it stores the winner's files).

Everything else asks these objects (`METHODS[name].traits.pooled_head`, ...) rather than
comparing method names. Adding a method: a module here registering its `Entry`, added to
`METHODS` below, and a test module under tests/unit/methods/.
"""

from __future__ import annotations

from typing import Any

from app.methods.auto import AUTO
from app.methods.base import AdapterWeights, Entry, Files, Method, Trainer, Traits
from app.methods.contrastive import CONTRASTIVE
from app.methods.ia3 import IA3
from app.methods.linear_probe import LINEAR_PROBE
from app.methods.lora import LORA
from app.methods.prefix import PREFIX
from app.methods.prompt import PROMPT
from app.registry.pooled_head import has_pooled_head
from app.registry.probe_format import MARKER, is_probe_in_lora

__all__ = [
    "METHODS",
    "PEFT_TYPES",
    "AdapterWeights",
    "Entry",
    "Files",
    "Method",
    "Trainer",
    "Traits",
    "decoder_methods",
    "method_of_files",
    "shown_method",
]

# The order is the one error messages list them in.
METHODS: dict[str, Method] = {
    m.name: m for m in (AUTO, LORA, PREFIX, PROMPT, IA3, LINEAR_PROBE, CONTRASTIVE)
}
# adapter_config.json's `peft_type` -> the method whose files it names.
PEFT_TYPES: dict[str, str] = {
    m.files.peft_type: m.name for m in METHODS.values() if m.files is not None
}


def decoder_methods(*, stored: bool) -> tuple[str, ...]:
    """Methods that train (`stored=False`: selectors included) or serve (`stored=True`:
    methods with files) on a decoder base, that is generation."""
    return tuple(
        m.name
        for m in METHODS.values()
        if "decoder" in m.traits.bases and (m.files is not None or not stored)
    )


def method_of_files(config: dict[str, Any]) -> Method | None:
    """The method whose files `config` describes (a probe in LoRA's clothes is a probe);
    None for a `peft_type` no method reads."""
    if is_probe_in_lora(config):
        return LINEAR_PROBE
    name = PEFT_TYPES.get(str(config.get("peft_type")))
    return METHODS[name] if name is not None else None


def shown_method(config: dict[str, Any], method: str) -> str:
    """The method the catalog lists: the trainer's name for a pooled-head adapter it marked
    (`"switchyard_method": "contrastive"`), else the method of the files. Serving never reads
    it."""
    marked = METHODS.get(str(config.get(MARKER)))
    if marked is not None and marked.traits.stored_as == method and has_pooled_head(config):
        return marked.name
    return method
