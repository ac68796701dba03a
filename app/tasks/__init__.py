"""Task types: what a row looks like, how many head outputs it needs, how outputs read.

One module per task holds its decoding and metrics; this package index says which tasks
exist and what head each needs.
"""

from __future__ import annotations

from app.errors import bad_request

CLASSIFICATION = "classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
TOKEN_CLASSIFICATION = "token_classification"
GENERATION = "generation"
EMBEDDINGS = "embeddings"

TASKS = (CLASSIFICATION, MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION, GENERATION, EMBEDDINGS)
ALIASES = {"multi_label": MULTI_LABEL, "multilabel": MULTI_LABEL, "ner": TOKEN_CLASSIFICATION}
ENCODER_TASKS = (CLASSIFICATION, MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION, EMBEDDINGS)
DECODER_TASKS = (GENERATION, EMBEDDINGS)


def canonical_task(task: str) -> str:
    """The task's canonical name; 400 for an unknown one."""
    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise bad_request(
            "invalid_task", f"task {task!r} is not one of {list(TASKS)}", param="task"
        )
    return task


def head_rows(task: str, labels: list[str]) -> int:
    """Outputs of the task head; 0 for tasks without a head."""
    if task in (GENERATION, EMBEDDINGS):
        return 0
    if task == REGRESSION:
        return 1
    minimum = 2 if task == CLASSIFICATION else 1
    if len(labels) < minimum:
        raise bad_request(
            "invalid_labels",
            f"task {task!r} needs at least {minimum} labels, got {len(labels)}",
            param="labels",
        )
    return len(labels)
