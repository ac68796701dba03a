"""`method: "auto"`: a selector, not an adapter of its own.

The trainer (app/training/auto.py) measures candidate methods on the job's rows and keeps the
best; the stored adapter is the winner's, in the winner's files. On a decoder (generation) LoRA
is the one candidate, so auto takes every base.
"""

from __future__ import annotations

from app.methods.base import ANY_BASE, Entry, Traits

AUTO = Entry(name="auto", traits=Traits(bases=ANY_BASE, layer_targets=True))
