"""A tiny random Llama and a byte-level BPE tokenizer, built in the test process in ~1 s.

Decoder unit tests (serving and training) share them: no file of the real base is read, and
a reference copy of the weights lets plain PEFT run next to the service's wrapped model.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from app.base import FrozenBase, wrap_base

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "name: alice, age: 31, city: paris",
    "translate the word to its code: apple -> A1, banana -> B2",
    "hello world, how are you today? fine thanks",
    '{"name": "bob", "age": 42}',
] * 4


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text round-trips) with a ChatML template and EOS `<|im_end|>`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0) -> LlamaForCausalLM:
    """2 layers, grouped-query attention, tied embeddings; weights big enough to vary outputs."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.3,
        architectures=["LlamaForCausalLM"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def serving_base(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> FrozenBase:
    """The frozen base the service runs: a deep copy, so `model` stays a plain reference."""
    return wrap_base(
        copy.deepcopy(model),
        tokenizer,
        name="tiny-llama",
        path=Path("."),
        device=torch.device("cpu"),
    )


def peft_adapter(
    model: LlamaForCausalLM, method: str, *, seed: int, virtual: int = 4
) -> tuple[PeftModel, dict[str, bytes]]:
    """A random LoRA (non-zero B) or prefix made with plain PEFT on a copy of `model`."""
    torch.manual_seed(seed)
    config: LoraConfig | PrefixTuningConfig
    if method == "lora":
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules="all-linear"
        )
    else:
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual)
    peft = get_peft_model(copy.deepcopy(model), config)
    for name, param in peft.named_parameters():
        if "lora_B" in name or "prompt_encoder" in name:
            param.data.normal_(0, 0.5 if method == "lora" else 1.0)
    peft.eval()
    with tempfile.TemporaryDirectory() as tmp:
        peft.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return peft, files
