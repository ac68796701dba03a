"""Issue 4 on the real packaged base over HTTP: files made by plain PEFT for lora, ia3, prompt
and prefix tuning serve PEFT's logits (< 1e-4), all of them in one mixed batch.

The adapters get random non-trivial weights (tests/unit/method_adapters.py) so that every
method changes the output. Prefix tuning is checked against the hand-written reference of that
module: PEFT saves a BERT prefix adapter but cannot run it under transformers 5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from tests.integration.conftest import LiveServer
from tests.unit.method_adapters import SEQ, peft_files, peft_logits, prefix_logits

pytestmark = pytest.mark.slow

LABELS = ["a", "b", "c"]
INPUTS: list[Any] = [
    "a gorgeous, witty, seductive movie",
    "the plot is a mess",
    {"text": "A man is playing a guitar.", "text_pair": "Someone plays an instrument."},
]
# (method, virtual tokens): two prompt lengths and two prefix lengths, so that the served batch
# pads prompts and prefixes of different lengths against each other.
SPECS = [("lora", 0), ("ia3", 0), ("prompt", 4), ("prompt", 10), ("prefix", 3), ("prefix", 8)]


def _upload(live: LiveServer, name: str, folder: Path) -> None:
    files = {k: (k, (folder / k).read_bytes()) for k in (CONFIG_FILE, WEIGHTS_FILE)}
    response = live.http.post(
        "/v1/adapters",
        data={"name": name, "task": SEQ, "labels": json.dumps(LABELS)},
        files=files,
    )
    assert response.status_code == 201, response.text


def _logits(output: list[dict[str, Any]]) -> torch.Tensor:
    scores = {o["label"]: o["score"] for o in output}
    return torch.tensor([scores[label] for label in LABELS])


def test_peft_files_of_every_method_serve_peft_logits_in_one_mixed_batch(
    live: LiveServer, minilm_dir: Path, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    expected: dict[str, list[torch.Tensor]] = {}
    for seed, (method, virtual) in enumerate(SPECS):
        name = f"peft-{method}-{virtual}"
        folder = peft_files(
            minilm_dir,
            tmp_path / name,
            method=method,
            task=SEQ,
            labels=3,
            seed=seed,
            virtual=max(virtual, 1),
        )
        _upload(live, name, folder)
        expected[name] = (
            prefix_logits(minilm_dir, folder, tokenizer, INPUTS, task=SEQ)
            if method == "prefix"
            else peft_logits(minilm_dir, folder, tokenizer, INPUTS, task=SEQ, labels=3)
        )
    # One request, every adapter: the service puts all their rows in one forward.
    response = live.http.post(
        "/v1/predict",
        json={
            "adapters": list(expected),
            "inputs": INPUTS,
            "parameters": {"top_k": None, "function_to_apply": "none"},
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for name, reference in expected.items():
        served = results[name]["outputs"]
        for row, (output, want) in enumerate(zip(served, reference, strict=True)):
            gap = (_logits(output) - want).abs().max().item()
            assert gap < 1e-4, (name, row, gap)
    # The methods really differ: no two adapters give the same logits.
    firsts = [tuple(round(float(x), 3) for x in v[0]) for v in expected.values()]
    assert len(set(firsts)) == len(firsts), firsts
