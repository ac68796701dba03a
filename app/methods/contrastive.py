"""`method: "contrastive"`: SetFit's few-shot recipe, a training-only method.

It has no files of its own: the trainer (app/training/contrastive.py, contrastive_run.py) tunes
a LoRA on sentence pairs, fits a head on pooled features, and saves a pooled-head LoRA marked
`"switchyard_method": "contrastive"` (app/registry/pooled_head.py), which the registry parses
and the runtime serves as any LoRA, and the catalog lists under this name.
"""

from __future__ import annotations

from app.methods.base import Entry, Traits
from app.methods.lora import LORA
from app.tasks import CLASSIFICATION

CONTRASTIVE = Entry(
    name="contrastive",
    # Pairs are "same label or not": that needs exactly one label a row.
    traits=Traits(
        tasks=frozenset({CLASSIFICATION}),
        tasks_note="single-label classification (texts or text pairs)",
        pooled_head=True,
        stored_as=LORA.name,
        # Its LoRA on pairs, 8 rows a class, 2 seeds (bench/contrastive_tune.py): 1e-3 gave CR
        # 0.79 and TREC 0.81 against 0.74 and 0.84 at 3e-4 (SetFit's 2e-5 is for a whole body).
        learning_rate=1e-3,
    ),
)
