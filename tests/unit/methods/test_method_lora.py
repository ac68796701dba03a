"""The lora plug-in: PEFT's files parsed with the scale folded in, served as PEFT computes them,
and its causal-LM trainer's files parsed on a decoder."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.methods import METHODS
from app.methods.base import Wrapping
from app.methods.lora import LORA
from app.tasks import GENERATION
from app.training.hyperparameters import Hyperparameters
from app.training.view import build_view
from tests.unit.methods.plugin_helpers import (
    LABELS,
    SEQ,
    causal_files,
    close,
    parse,
    parts,
    peft_folder,
    read_files,
    reference,
    refusal,
    served_raw,
)

QUERY = "encoder.layer.0.attention.self.query"


def test_lora_files_parse_with_the_scale_folded_into_b(
    tiny_base: FrozenBase, tmp_path: Path
) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "lora")))
    weights = parse(tiny_base, config, tensors)
    assert weights.method == "lora" and weights.rank == 4
    assert QUERY in weights.lora and not weights.ia3 and weights.prompt is None
    b = next(v for k, v in tensors.items() if k.endswith(f"{QUERY}.lora_B.weight"))
    scale = config["lora_alpha"] / config["r"]
    assert torch.allclose(weights.lora[QUERY][1], b.float() * scale)


def test_lora_refuses_a_tensor_that_is_not_a_lora_weight(
    tiny_base: FrozenBase, tmp_path: Path
) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "lora")))
    tensors[f"base_model.model.bert.{QUERY}.lora_C.weight"] = torch.zeros(4, 32)
    assert refusal(tiny_base, config, tensors) == "unknown_tensor"
    config["r"] = 0
    assert refusal(tiny_base, config, parts(read_files(tmp_path / "lora"))[1]) == (
        "invalid_adapter_config"
    )


def test_lora_served_equals_peft(
    client: TestClient, tiny_base: FrozenBase, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    folder = peft_folder(tiny_base, tmp_path, "lora")
    close(served_raw(client, "l", read_files(folder)), reference(tiny_base, folder, tokenizer))


def test_lora_trainer_keeps_the_head_under_modules_to_save(tiny_base: FrozenBase) -> None:
    view = build_view(tiny_base, task=SEQ, num_labels=len(LABELS))
    assert LORA.trainer is not None
    model = LORA.trainer.wrap(
        Wrapping(view=view, hp=Hyperparameters(rank=2), task=SEQ, base=tiny_base)
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n and "classifier" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)


def test_lora_causal_files_parse_on_the_decoder() -> None:
    base, files = causal_files("lora", Hyperparameters(rank=2))
    config, tensors = parts(files)
    weights = parse(base, config, tensors, task=GENERATION, labels=[])
    assert weights.method == "lora" and weights.rank == 2 and weights.lora
    assert "decoder" in METHODS["lora"].traits.bases
