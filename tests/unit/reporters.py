"""A training reporter for tests (the `TrainingReporter` protocol of app/training/types.py)."""

from __future__ import annotations

from typing import Any


class RecordingReporter:
    """Keeps every progress call and event; tests that need neither just ignore them."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.progress_calls: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        self.steps.append(step)
        self.progress_calls.append({"step": step, "total_steps": total_steps})

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
