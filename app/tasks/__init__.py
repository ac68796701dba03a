"""The task registry: every module of this package that defines `TASK` is a task.

Each task module registers one object implementing the protocols of `app.tasks.base`; the
rest of the service asks `TASKS[name]` (or the lookups below) what a task does rather than
comparing task names. A new task is one new module here (and its tests).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import cast

from app.errors import bad_request
from app.tasks.base import HeadTask, Readout, Task, TrainableTask

__all__ = [
    "ALIASES",
    "CLASSIFICATION",
    "DECODER_TASKS",
    "EMBEDDINGS",
    "ENCODER_TASKS",
    "GENERATION",
    "HEAD_TASKS",
    "LANGUAGE_MODELING",
    "MULTI_LABEL",
    "REGRESSION",
    "TASKS",
    "TOKEN_CLASSIFICATION",
    "TRAINABLE",
    "TRAINABLE_TASKS",
    "Readout",
    "canonical_task",
    "check_base",
    "get_task",
    "head_rows",
    "head_task",
    "reading",
    "trainable_task",
]

_SUPPORT = frozenset({"base", "objectives", "sequence"})  # modules that hold no task


def _discover() -> dict[str, Task]:
    found: list[Task] = []
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SUPPORT:
            task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
            if task is not None:
                found.append(cast(Task, task))
    names = [task.name for task in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two task modules register the same name: {sorted(names)}")
    return {task.name: task for task in sorted(found, key=lambda t: t.order)}


TASKS: dict[str, Task] = _discover()

from app.tasks import (  # noqa: E402  (loaded by the discovery above)
    classification,
    embeddings,
    generation,
    language_modeling,
    multi_label,
    regression,
    token_classification,
)

TRAINABLE: dict[str, TrainableTask] = {
    n: t for n, t in TASKS.items() if isinstance(t, TrainableTask)
}
HEAD_TASKS: dict[str, HeadTask] = {n: t for n, t in TRAINABLE.items() if isinstance(t, HeadTask)}
ALIASES = {alias: task.name for task in TASKS.values() for alias in task.aliases}
ENCODER_TASKS = tuple(n for n, t in TASKS.items() if "encoder" in t.kinds)
DECODER_TASKS = tuple(n for n, t in TASKS.items() if "decoder" in t.kinds)
TRAINABLE_TASKS = tuple(TRAINABLE)

# The names, for callers that pass a task along (tests, benchmarks, fixed-task methods).
CLASSIFICATION = classification.NAME
MULTI_LABEL = multi_label.NAME
REGRESSION = regression.NAME
TOKEN_CLASSIFICATION = token_classification.NAME
GENERATION = generation.NAME
EMBEDDINGS = embeddings.NAME
LANGUAGE_MODELING = language_modeling.NAME


def canonical_task(task: str) -> str:
    """The task's canonical name; 400 for an unknown one."""
    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise bad_request(
            "invalid_task", f"task {task!r} is not one of {list(TASKS)}", param="task"
        )
    return task


def get_task(task: str) -> Task:
    """The task of a name or alias; 400 for an unknown one."""
    return TASKS[canonical_task(task)]


def trainable_task(task: str) -> TrainableTask:
    """The task of a name or alias, if it has training rows; else 400 `invalid_task`."""
    name = canonical_task(task)
    if name not in TRAINABLE:
        raise bad_request(
            "invalid_task",
            f"task {name!r} cannot be trained; use one of {list(TRAINABLE_TASKS)}",
            param="task",
        )
    return TRAINABLE[name]


def head_task(task: str) -> HeadTask:
    """The task of a name or alias, if it is served through a head on the encoder."""
    name = canonical_task(task)
    if name not in HEAD_TASKS:
        raise bad_request(
            "unsupported_task",
            f"task {name!r} has no encoder head; head tasks are {list(HEAD_TASKS)}",
            param="task",
        )
    return HEAD_TASKS[name]


def head_rows(task: str, labels: list[str]) -> int:
    """Outputs of the task head; 0 for tasks without a head."""
    return get_task(task).head_size(labels)


def reading(readout: Readout) -> tuple[str, ...]:
    """The tasks whose answer comes from `readout`, in registry order."""
    return tuple(name for name, task in TASKS.items() if task.readout is readout)


def check_base(task: str, kind: str) -> Task:
    """The task, if a base of `kind` runs it; else 400 `unsupported_task`."""
    found = get_task(task)
    if kind not in found.kinds:
        message = (
            f"task {found.name!r} needs an encoder base; this one is a decoder"
            if kind == "decoder"
            else f"{found.name} needs a decoder base"
        )
        raise bad_request("unsupported_task", message, param="task")
    return found
