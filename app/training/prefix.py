"""Prefix tuning trained by us on the training view, saved in PEFT's PREFIX_TUNING layout.

PEFT cannot run prefix tuning on BERT under transformers 5 (its attention lost
`past_key_values`), so the view's self-attention modules get the same patch the serving path
uses (`app.runtime.prefix_attention`), and the prefix is a parameter of ours: one
`prompt_embeddings` [virtual, layers * 2 * hidden] tensor, key then value for each layer, which
is exactly what PEFT saves and what the registry parses. Training and serving therefore run
the same arithmetic, positions included (a row's tokens start after its prefix, PEFT's rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from app.errors import bad_request
from app.runtime.prefix_attention import (
    PrefixBatch,
    PrefixRouter,
    additive_mask,
    attention_geometry,
    layer_kv,
    patch_self_attention,
    self_attentions,
)

# Token ids below this are special or unused pieces in BERT vocabularies; the prefix starts as
# the keys/values of ordinary words, so the untrained adapter barely disturbs the base.
FIRST_WORD_ID = 1000


class PrefixModel(nn.Module):
    """The view plus a learned per-layer key/value prefix; forward and save like a PeftModel."""

    def __init__(self, view: nn.Module, *, virtual: int, task_type: str, base_path: str) -> None:
        super().__init__()
        # The head first, under PEFT's `modules_to_save` name: the trainer gives parameters so
        # named the head learning rate, and the view's own copy of the name is a duplicate.
        model: Any = view
        self.modules_to_save = nn.ModuleDict({"classifier": model.classifier})
        self.model: Any = view
        self.router = PrefixRouter()
        if not patch_self_attention(view, self.router):
            raise bad_request(
                "unsupported_method",
                "prefix tuning needs an encoder base with BERT-style attention",
                param="method",
            )
        self.layers, self.heads, self.head_dim = attention_geometry(view)
        self.virtual = virtual
        self.task_type = task_type
        self.base_path = base_path
        self.prompt_embeddings = nn.Parameter(self._initial_prefix())

    @torch.no_grad()
    def _initial_prefix(self) -> torch.Tensor:
        """[virtual, layers * 2 * hidden]: what each layer computes for a few ordinary words."""
        backbone: Any = getattr(self.model, self.model.base_model_prefix)
        device = self.model.classifier.weight.device
        vocab = int(backbone.config.vocab_size)
        low = FIRST_WORD_ID if vocab > 2 * FIRST_WORD_ID else 0
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(low, vocab, (1, self.virtual), generator=generator).to(device)
        captured: list[torch.Tensor] = []
        hooks = [
            getattr(module, part).register_forward_hook(
                lambda _m, _a, out: captured.append(out[0].detach())
            )
            for module in self_attentions(self.model)
            for part in ("key", "value")
        ]
        try:
            backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
        finally:
            for hook in hooks:
                hook.remove()
        # captured: key, value per layer, each [virtual, hidden]
        return torch.cat(captured, dim=-1).float().clone()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        rows, tokens = input_ids.shape
        grid = self.prompt_embeddings.view(self.virtual, self.layers, 2, self.heads, self.head_dim)

        def kv(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
            return layer_kv(grid[:, layer].unsqueeze(0).expand(rows, -1, -1, -1, -1))

        valid = torch.ones(rows, self.virtual, device=input_ids.device)
        dtype = self.model.classifier.weight.dtype
        positions = torch.arange(tokens, device=input_ids.device)[None, :] + self.virtual
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit:
            positions = positions.clamp(max=int(limit) - 1)
        self.router.batch = PrefixBatch(kv=kv, mask=additive_mask(valid, attention_mask, dtype))
        try:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=positions.expand(rows, -1),
                labels=labels,
            )
        finally:
            self.router.batch = None

    def save_pretrained(self, folder: str | Path) -> None:
        """PEFT's PREFIX_TUNING files: adapter_config.json and adapter_model.safetensors."""
        folder = Path(folder)
        hidden = self.heads * self.head_dim
        config = {
            "peft_type": "PREFIX_TUNING",
            "task_type": self.task_type,
            "num_virtual_tokens": self.virtual,
            "num_layers": self.layers,
            "token_dim": hidden,
            "num_attention_heads": self.heads,
            "encoder_hidden_size": hidden,
            "prefix_projection": False,
            "num_transformer_submodules": 1,
            "modules_to_save": ["classifier"],
            "inference_mode": True,
            "base_model_name_or_path": self.base_path,
        }
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
        head: Any = self.model.classifier
        tensors = {
            "prompt_embeddings": self.prompt_embeddings.detach().float().cpu().contiguous(),
            # PEFT's own key for a prompt-learning head; the registry strips `base_model.`
            "base_model.classifier.weight": head.weight.detach().float().cpu().contiguous(),
            "base_model.classifier.bias": head.bias.detach().float().cpu().contiguous(),
        }
        save_file(tensors, str(folder / "adapter_model.safetensors"))
