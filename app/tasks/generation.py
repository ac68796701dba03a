"""Generation rows: prompts (plain text or chat messages) to token ids, and training examples.

Serving and training share `prompt_ids`, so a prompt is tokenized exactly the same way when an
adapter learns from it and when it is served: a LoRA trained on `{"prompt", "completion"}` rows
sees at inference the very token sequence it was trained to continue. Training labels cover
the completion (and the end-of-sequence token) only.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from app.errors import bad_request
from app.tasks.base import IGNORE, Readout, Row, RowProblem, TrainableTask, Unlabeled, show

__all__ = ["IGNORE", "TASK", "check_messages", "example_ids", "example_length", "prompt_ids"]

NAME = "generation"
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
METHODS = ("lora", "prefix", "auto")  # auto: lora, the one candidate


class Generation(Unlabeled):
    """Rows are `{"prompt", "completion"}` or `{"messages": [...]}`; a causal LM continues."""

    name = NAME
    order = 4
    aliases: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"decoder"})
    readout = Readout.TEXT
    parameters: frozenset[str] = frozenset()  # sampling parameters have their own model
    methods: tuple[str, ...] | None = METHODS
    single_label = False
    family = NAME
    columns: tuple[str, ...] = ("messages", "prompt", "completion")
    detect_rank = 1
    primary_metric = "loss"  # validation loss on completion tokens: lower is better

    def check_row(self, row: Row) -> Row:
        """Either a conversation with an assistant turn, or a prompt and its completion."""
        if "messages" in row:
            if "prompt" in row or "completion" in row:
                raise RowProblem("give either messages or prompt+completion, not both")
            return {"messages": _training_messages(row["messages"])}
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str):
            raise RowProblem(f"prompt must be a string, got {show(prompt)}")
        if not isinstance(completion, str) or not completion.strip():
            raise RowProblem(f"completion must be a non-empty string, got {show(completion)}")
        return {"prompt": prompt, "completion": completion}


def _training_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RowProblem(f"messages must be a non-empty list, got {show(messages)}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowProblem(f"messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            raise RowProblem(
                f"messages[{i}].role must be one of {list(MESSAGE_ROLES)}, got {show(role)}"
            )
        if not isinstance(content, str):
            raise RowProblem(f"messages[{i}].content must be a string, got {show(content)}")
        out.append({"role": role, "content": content})
    # Only assistant turns are learned from; a conversation without one teaches nothing.
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise RowProblem("messages need at least one non-empty assistant message")
    return out


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, item: Any, *, param: str = "inputs"
) -> list[int]:
    """Token ids of one prompt: a string, `{"prompt": str}` or `{"messages": [...]}`.

    Chat messages go through the tokenizer's chat template with the assistant turn opened, so
    the model continues as the assistant.
    """
    if isinstance(item, str):
        return list(tokenizer(item)["input_ids"])
    if isinstance(item, dict) and isinstance(item.get("prompt"), str) and set(item) == {"prompt"}:
        return list(tokenizer(item["prompt"])["input_ids"])
    if isinstance(item, dict) and set(item) == {"messages"}:
        messages = check_messages(item["messages"], param=f"{param}.messages")
        return _render_ids(tokenizer, messages, generation_prompt=True, param=param)
    raise bad_request(
        "invalid_input",
        f"{param} must be a string, {{'prompt': str}} or {{'messages': [...]}}",
        param=param,
    )


def check_messages(messages: Any, *, param: str) -> list[dict[str, str]]:
    """Chat messages as a list of {role, content} strings; 400 naming the first bad one."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("invalid_input", f"{param} must be a non-empty list", param=param)
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in MESSAGE_ROLES or not isinstance(content, str):
            raise bad_request(
                "invalid_input",
                f"{param}[{i}] must be {{'role': one of {list(MESSAGE_ROLES)}, 'content': str}}",
                param=f"{param}[{i}]",
            )
        out.append({"role": str(role), "content": content})
    return out


def example_ids(
    tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], *, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training row; labels are IGNORE outside the completion."""
    if "messages" in row:
        ids, labels = _chat_example(tokenizer, check_messages(row["messages"], param="messages"))
    else:
        prompt = prompt_ids(tokenizer, row["prompt"], param="prompt")
        completion = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
        eos = tokenizer.eos_token_id
        # Ending on EOS teaches the adapter to stop, so served rows finish before max_new_tokens.
        completion += [int(eos)] if eos is not None else []
        ids, labels = prompt + completion, [IGNORE] * len(prompt) + completion
    return _truncate(ids, labels, max_length)


def example_length(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any]) -> int:
    """Untruncated token count of a training row, to pick max_length from the data."""
    ids, _labels = example_ids(tokenizer, row, max_length=1 << 30)
    return len(ids)


def _chat_example(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Every assistant turn is learned; system, user and tool turns are context only."""
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise bad_request(
            "invalid_input", "messages need an assistant turn to learn from", param="messages"
        )
    ids = _render_ids(tokenizer, messages[: last + 1], generation_prompt=False, param="messages")
    labels = [IGNORE] * len(ids)
    for k, message in enumerate(messages[: last + 1]):
        if message["role"] != "assistant":
            continue
        start = len(_render_ids(tokenizer, messages[:k], generation_prompt=True, param="messages"))
        through = _render_ids(
            tokenizer, messages[: k + 1], generation_prompt=False, param="messages"
        )
        if ids[: len(through)] != through or start > len(through):
            # Templates that rewrite earlier turns (e.g. drop past reasoning) have no stable
            # prefix, so which tokens belong to which turn is undefined.
            raise bad_request(
                "unsupported_chat_template",
                "the tokenizer's chat template does not render conversations prefix by prefix",
                param="messages",
            )
        labels[start : len(through)] = ids[start : len(through)]
    return ids, labels


def _render_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    *,
    generation_prompt: bool,
    param: str,
) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise bad_request(
            "no_chat_template", "this base has no chat template; send plain prompts", param=param
        )
    if not messages:
        return []
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    # The template writes its own special tokens (BOS included where the model wants one).
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def _truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut the prompt's start first (the completion is what is learned), then the end."""
    overflow = len(ids) - max_length
    if overflow <= 0:
        return ids, labels
    first_label = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
    cut = min(overflow, first_label)
    return ids[cut:][:max_length], labels[cut:][:max_length]


TASK: TrainableTask = Generation()
