"""The prompt plug-in: one `prompt_embeddings` tensor parsed and served as PEFT computes it;
its virtual tokens take the base's positions, which the job's length cap accounts for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.methods.base import Wrapping
from app.methods.prompt import PROMPT, PromptTokenModel
from app.tasks import TOKEN_CLASSIFICATION
from app.training.hyperparameters import Hyperparameters
from app.training.preflight import preflight
from app.training.types import TrainingPlan
from app.training.view import build_view
from tests.unit.methods.plugin_helpers import (
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


def test_prompt_embeddings_parse(tiny_base: FrozenBase, tmp_path: Path) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "prompt")))
    weights = parse(tiny_base, config, tensors)
    assert weights.method == "prompt" and weights.prompt is not None
    assert tuple(weights.prompt.shape) == (3, tiny_base.hidden_size)


def test_prompt_refuses_embeddings_of_another_width(tiny_base: FrozenBase, tmp_path: Path) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "prompt")))
    tensors["prompt_embeddings"] = torch.zeros(3, tiny_base.hidden_size + 1)
    assert refusal(tiny_base, config, tensors) == "shape_mismatch"


def test_prompt_served_equals_peft(
    client: TestClient, tiny_base: FrozenBase, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    folder = peft_folder(tiny_base, tmp_path, "prompt")
    served = served_raw(client, "p", read_files(folder))
    close(served, reference(tiny_base, folder, tokenizer, virtual=3))


def test_prompt_virtual_tokens_shorten_the_length_cap(tiny_base: FrozenBase) -> None:
    positions = tiny_base.config.max_position_embeddings
    plan = TrainingPlan(
        adapter="a",
        task=SEQ,
        method=PROMPT.name,
        train_rows=[],
        validation_rows=[],
        labels=["a", "b"],
        hyperparameters={"num_virtual_tokens": 20, "max_length": positions},
    )
    with pytest.raises(SwitchyardError) as info:
        preflight(plan, base=tiny_base, max_rank=64, max_tokens=10_000)
    assert "beside 20 virtual tokens" in info.value.message
    assert PROMPT.traits.virtual_positions


def test_prompt_trainer_drops_virtual_positions_for_tokens(tiny_base: FrozenBase) -> None:
    view = build_view(tiny_base, task=TOKEN_CLASSIFICATION, num_labels=3)
    assert PROMPT.trainer is not None
    hp = Hyperparameters(num_virtual_tokens=2)
    job = Wrapping(view=view, hp=hp, task=TOKEN_CLASSIFICATION, base=tiny_base)
    model = PROMPT.trainer.wrap(job)
    assert isinstance(model, PromptTokenModel) and model.virtual == 2
