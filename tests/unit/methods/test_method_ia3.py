"""The ia3 plug-in: PEFT's vectors parsed on the side their shape says, served as PEFT computes
them, and the user's modules split into feed-forward and the others for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.methods.base import Wrapping
from app.methods.ia3 import IA3
from app.training.hyperparameters import Hyperparameters
from app.training.view import build_view
from tests.unit.methods.plugin_helpers import (
    LABELS,
    SEQ,
    close,
    parse,
    parts,
    peft_folder,
    read_files,
    reference,
    refusal,
    served_raw,
)


def test_ia3_vectors_parse_on_their_side(tiny_base: FrozenBase, tmp_path: Path) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "ia3")))
    weights = parse(tiny_base, config, tensors)
    assert weights.method == "ia3" and weights.ia3 and not weights.lora
    for path, vector in weights.ia3.items():
        d_in, d_out = tiny_base.linear_shapes[path]
        assert vector.shape == ((d_in,) if path in weights.ia3_input_side else (d_out,))
    # BERT's feed-forward output (`output.dense`) is scaled on its input in PEFT's defaults
    assert any(p.endswith("output.dense") for p in weights.ia3_input_side)


def test_ia3_refuses_a_vector_of_the_wrong_shape(tiny_base: FrozenBase, tmp_path: Path) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "ia3")))
    key = next(k for k in tensors if k.endswith(".ia3_l"))
    tensors[key] = torch.ones(3, 3)
    assert refusal(tiny_base, config, tensors) == "shape_mismatch"


def test_ia3_served_equals_peft(
    client: TestClient, tiny_base: FrozenBase, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    folder = peft_folder(tiny_base, tmp_path, "ia3")
    close(served_raw(client, "i", read_files(folder)), reference(tiny_base, folder, tokenizer))


def test_ia3_trainer_scales_dense_modules_on_their_input(tiny_base: FrozenBase) -> None:
    view = build_view(tiny_base, task=SEQ, num_labels=len(LABELS))
    assert IA3.trainer is not None
    hp = Hyperparameters(target_modules=["query", "dense"])
    model = IA3.trainer.wrap(Wrapping(view=view, hp=hp, task=SEQ, base=tiny_base))
    peft: Any = model
    config = peft.peft_config["default"]
    assert set(config.feedforward_modules) == {"dense"}
    assert set(config.target_modules) == {"query", "dense"}
