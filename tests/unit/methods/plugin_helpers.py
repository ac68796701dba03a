"""What the method plug-in tests share: files read back, parsed, uploaded and served over HTTP.

Serving goes through the REST API (its contract does not move), and references come from plain
PEFT (tests/unit/method_adapters.py), so these tests hold whatever the runtime is refactored to.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.methods import AdapterWeights
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.registry.validate import parse_json_object, parse_safetensors
from app.registry.weights import build_weights
from app.training.hyperparameters import Hyperparameters
from tests.conftest import upload
from tests.unit.method_adapters import SEQ, TOKEN, peft_files, peft_logits
from tests.unit.tiny_decoder import serving_base, tiny_llama, tiny_tokenizer

LABELS = ["l0", "l1", "l2"]
TEXTS = ["a gripping, beautiful film", "meh", "an unexpectedly long sentence about nothing"]
RAW = {"top_k": None, "function_to_apply": "none"}

__all__ = ["LABELS", "RAW", "SEQ", "TEXTS", "TOKEN"]


def read_files(folder: Path) -> dict[str, bytes]:
    """The two adapter files of a saved folder."""
    return {name: (folder / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


def parts(files: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and tensors, checked the way an upload is."""
    config = parse_json_object(files[CONFIG_FILE], what=CONFIG_FILE, param=CONFIG_FILE)
    return config, parse_safetensors(files[WEIGHTS_FILE])


def parse(
    base: FrozenBase,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    task: str = SEQ,
    labels: list[str] | None = None,
) -> AdapterWeights:
    """`build_weights` as the registry calls it."""
    return build_weights(config, tensors, base, task=task, labels=labels or LABELS, max_rank=64)


def refusal(base: FrozenBase, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """The error code `build_weights` refuses these parts with (a 4xx)."""
    try:
        parse(base, config, tensors)
    except SwitchyardError as exc:
        assert 400 <= exc.status < 500, exc
        return exc.code
    raise AssertionError("the adapter was accepted")


def peft_folder(base: FrozenBase, tmp: Path, method: str, *, task: str = SEQ) -> Path:
    """A random adapter of `method` made with plain PEFT on the tiny base."""
    return peft_files(
        base.path, tmp / method, method=method, task=task, labels=len(LABELS), seed=1, virtual=3
    )


def served_raw(client: TestClient, name: str, files: dict[str, bytes]) -> list[torch.Tensor]:
    """Upload `files` as `name` (classification) and predict TEXTS over HTTP: raw scores in
    label order."""
    response = upload(client, name, files, task=SEQ, labels=LABELS)
    assert response.status_code in (200, 201), response.text
    reply = client.post(f"/v1/adapters/{name}/predict", json={"inputs": TEXTS, "parameters": RAW})
    assert reply.status_code == 200, reply.text
    outputs = reply.json()["outputs"]
    return [torch.tensor([_scores(row)[label] for label in LABELS]) for row in outputs]


def _scores(row: list[dict[str, Any]]) -> dict[str, float]:
    return {item["label"]: float(item["score"]) for item in row}


def reference(
    base: FrozenBase, folder: Path, tokenizer: PreTrainedTokenizerBase, virtual: int = 0
) -> list[torch.Tensor]:
    """Plain PEFT's logits for TEXTS, one row at a time."""
    return peft_logits(
        base.path, folder, tokenizer, TEXTS, task=SEQ, labels=len(LABELS), virtual=virtual
    )


def close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Row by row within 1e-5."""
    assert len(got) == len(want)
    for row, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape, (row, a.shape, b.shape)
        assert (a - b).abs().max() < 1e-5, (row, (a - b).abs().max())


def causal_files(method: str, hp: Hyperparameters) -> tuple[FrozenBase, dict[str, bytes]]:
    """A generation adapter made by `METHODS[method].causal` on the tiny Llama, its trainable
    weights perturbed so that it is not the identity, and the serving base to parse it on."""
    from app.methods import METHODS

    causal = METHODS[method].causal
    assert causal is not None
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    base = serving_base(model, tokenizer)
    peft: PeftModel = causal.causal_lm(copy.deepcopy(model), hp, targets=None)
    torch.manual_seed(0)
    for _name, param in peft.named_parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        peft.save_pretrained(tmp)
        return base, read_files(Path(tmp))
