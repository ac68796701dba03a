"""What plain PEFT computes for an adapter folder: the reference the service must match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase


def peft_model(base_dir: Path, adapter_dir: Path, num_labels: int) -> PeftModel:
    """The adapter loaded the ordinary way, on a fresh copy of the tiny base."""
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels)
    return PeftModel.from_pretrained(model, adapter_dir).eval()


def peft_logits(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, inputs: list[Any]
) -> torch.Tensor:
    """[rows, labels] logits for strings or {"text", "text_pair"} inputs."""
    texts = [x if isinstance(x, str) else x["text"] for x in inputs]
    pairs = [None if isinstance(x, str) else x.get("text_pair") for x in inputs]
    rows = []
    with torch.inference_mode():
        for text, pair in zip(texts, pairs, strict=True):
            batch = tokenizer(text, pair, return_tensors="pt")
            rows.append(model(**batch).logits[0])
    return torch.stack(rows)


def as_vector(output: list[dict[str, Any]], labels: list[str]) -> torch.Tensor:
    """A classification output ([{label, score}], any order) as scores in head order."""
    scores = {item["label"]: item["score"] for item in output}
    assert sorted(scores) == sorted(labels), (scores, labels)
    return torch.tensor([scores[label] for label in labels])
