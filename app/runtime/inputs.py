"""What an encoder predict request may say: the parameters each task reads, the input keys.

A parameter no task of the request reads, or an input key the tokenizer never sees, was a
mistake the caller would never notice (a misspelt `top-k` silently gave the default), so both
are a 400 naming the key. Generation parameters are checked by their own model
(`app.runtime.sampling.GenerationParams`, which forbids extras) and generation inputs by
`app.tasks.generation.prompt_ids`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import bad_request
from app.tasks import TASKS

# What each task's decoding (and the engine's embeddings pooling) reads.
ACCEPTED_PARAMETERS: Mapping[str, frozenset[str]] = {
    name: task.parameters for name, task in TASKS.items()
}
INPUT_KEYS = ("text", "text_pair")


def check_parameter_names(params: Mapping[str, Any], tasks: Iterable[str]) -> None:
    """400 `invalid_parameter` for the first parameter none of `tasks` reads."""
    tasks = sorted(set(tasks))
    accepted = frozenset().union(*(ACCEPTED_PARAMETERS.get(t, frozenset()) for t in tasks))
    for key in params:
        if key not in accepted:
            what = ", ".join(tasks)
            allowed = sorted(accepted) or "none"
            raise bad_request(
                "invalid_parameter",
                f"parameter {key!r} is not read by {what} adapters (accepted: {allowed})",
                param=f"parameters.{key}",
            )


def check_input_keys(inputs: Iterable[Any]) -> None:
    """400 `invalid_input` for an input object with a key other than text and text_pair."""
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            continue
        for key in item:
            if key not in INPUT_KEYS:
                raise bad_request(
                    "invalid_input",
                    f"inputs[{index}] has key {key!r}; an input object takes only "
                    f"{list(INPUT_KEYS)}",
                    param=f"inputs[{index}].{key}",
                )
