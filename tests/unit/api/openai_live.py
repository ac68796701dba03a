"""Live tiny services for the `openai` SDK tests: a tiny Llama (generation, fine-tuning) and a
tiny BERT (embeddings, API keys), each served by uvicorn on a free port in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pydantic
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore
from tests.unit.client.live import live_service
from tests.unit.tiny_decoder import peft_adapter, serving_base

PARENT = {"adapter": "words", "version": 1}


def sdk(url: str, key: str = "unused") -> openai.OpenAI:
    """The official client against a live service; no retries, so a 429 raises at once."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def sdk_extra(model: pydantic.BaseModel) -> dict[str, Any]:
    """The fields the SDK's types do not declare (ours: `switchyard`, `best`, ...)."""
    assert model.model_extra is not None  # the SDK's models allow extras
    return model.model_extra


def decoder_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for the tiny Llama: short generations, a SQLite catalog in `tmp`."""
    values: dict[str, Any] = dict(
        store=tmp / "store",
        database_url=f"sqlite:///{tmp}/db.sqlite",
        max_wait_ms=1.0,
        max_new_tokens=32,
        max_prompt_tokens=48,
        max_input_tokens=64,
        _env_file=None,
    )
    return Settings(**{**values, **overrides})


@contextmanager
def decoder_service(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, settings: Settings
) -> Iterator[str]:
    """The tiny Llama with adapters `words` (LoRA) and `words-child` (its lineage names
    `words` v1 as parent), registered before the service starts."""
    base = serving_base(model, tok)
    registry = Registry(AdapterStore(settings.store), base, settings)
    _peft, files = peft_adapter(model, "lora", seed=1)
    for name, lineage in (("words", {}), ("words-child", {"parent": PARENT})):
        registry.register(
            name,
            config_bytes=files[CONFIG_FILE],
            weights_bytes=files[WEIGHTS_FILE],
            task="generation",
            labels=[],
            meta={"lineage": {"source": "upload", **lineage}},
        )
    with live_service(settings, base) as url:
        yield url


@contextmanager
def encoder_service(base: FrozenBase, settings: Settings, files: dict[str, bytes]) -> Iterator[str]:
    """The tiny BERT with classification adapters `sst2` and `other`."""
    registry = Registry(AdapterStore(settings.store), base, settings)
    for name in ("sst2", "other"):
        registry.register(
            name,
            config_bytes=files[CONFIG_FILE],
            weights_bytes=files[WEIGHTS_FILE],
            task="classification",
            labels=["neg", "pos"],
        )
    with live_service(settings, base) as url:
        yield url
