"""The prefix plug-in: PEFT's PREFIX_TUNING layout parsed per layer, served as the hand-written
reference computes it (PEFT cannot run it on BERT under transformers 5), trained by our model on
encoders and by PEFT on decoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.methods.base import Wrapping
from app.methods.prefix import PREFIX
from app.tasks import GENERATION
from app.training.hyperparameters import Hyperparameters
from app.training.prefix import PrefixModel
from app.training.view import build_view
from tests.unit.method_adapters import prefix_logits
from tests.unit.methods.plugin_helpers import (
    LABELS,
    SEQ,
    TEXTS,
    causal_files,
    close,
    parse,
    parts,
    peft_folder,
    read_files,
    refusal,
    served_raw,
)


def test_prefix_parses_into_per_layer_keys_and_values(
    tiny_base: FrozenBase, tmp_path: Path
) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "prefix")))
    weights = parse(tiny_base, config, tensors)
    heads = tiny_base.config.num_attention_heads
    assert weights.method == "prefix" and len(weights.prefix) == tiny_base.num_layers
    key, value = weights.prefix[0]
    assert key.shape == value.shape == (heads, 3, tiny_base.hidden_size // heads)
    grid = tensors["prompt_embeddings"].view(3, tiny_base.num_layers * 2, heads, -1)
    assert torch.equal(weights.prefix[1][1], grid[:, 3].permute(1, 0, 2).float())


def test_prefix_refuses_a_projection(tiny_base: FrozenBase, tmp_path: Path) -> None:
    config, tensors = parts(read_files(peft_folder(tiny_base, tmp_path, "prefix")))
    config["prefix_projection"] = True
    assert refusal(tiny_base, config, tensors) == "invalid_adapter_config"


def test_prefix_served_equals_the_reference(
    client: TestClient, tiny_base: FrozenBase, tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    folder = peft_folder(tiny_base, tmp_path, "prefix")
    want = prefix_logits(tiny_base.path, folder, tokenizer, TEXTS, task=SEQ)
    close(served_raw(client, "x", read_files(folder)), want)


def test_prefix_trainer_is_ours_on_an_encoder(tiny_base: FrozenBase) -> None:
    view = build_view(tiny_base, task=SEQ, num_labels=len(LABELS))
    assert PREFIX.trainer is not None and not PREFIX.traits.checkpointable
    hp = Hyperparameters(num_virtual_tokens=2)
    model = PREFIX.trainer.wrap(Wrapping(view=view, hp=hp, task=SEQ, base=tiny_base))
    assert isinstance(model, PrefixModel) and model.virtual == 2


def test_prefix_trainer_refuses_a_decoder_base() -> None:
    base, _files = causal_files("prefix", Hyperparameters(num_virtual_tokens=2))
    assert PREFIX.trainer is not None
    with pytest.raises(SwitchyardError) as info:
        PREFIX.trainer.wrap(
            Wrapping(view=base.model, hp=Hyperparameters(), task=GENERATION, base=base)
        )
    assert info.value.code == "unsupported_method"


def test_prefix_causal_files_parse_on_the_decoder() -> None:
    base, files = causal_files("prefix", Hyperparameters(num_virtual_tokens=2))
    config, tensors = parts(files)
    weights = parse(base, config, tensors, task=GENERATION, labels=[])
    assert weights.method == "prefix" and len(weights.prefix) == base.num_layers
    assert weights.prefix[0][0].shape[1] == 2
