"""Generation parameters and per-row token choice: greedy, or temperature / top-p sampling.

Every row owns its sampler, and a sampled row draws from its own seeded generator exactly once
per step, so a row with a `seed` gets the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import secrets
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import bad_request

DEFAULT_MAX_NEW_TOKENS = 64
MAX_STOP_STRINGS = 8


class GenerationParams(BaseModel):
    """The `parameters` of a generation request; greedy unless temperature > 0 or do_sample."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(None, ge=0, lt=2**63)
    do_sample: bool | None = None
    return_full_text: bool = False
    ignore_eos: bool = False  # run to max_new_tokens (benchmarks measure fixed lengths)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # OpenAI and transformers accept a single stop string as well as a list.
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @property
    def greedy(self) -> bool:
        if self.do_sample is not None:
            return not self.do_sample
        return self.temperature == 0.0

    @property
    def effective_temperature(self) -> float:
        """do_sample without a temperature samples at 1, as transformers does."""
        return self.temperature if self.temperature > 0 else 1.0


def parse_params(raw: dict[str, Any], *, max_new_tokens: int) -> GenerationParams:
    """Validate request parameters; a 400 names the field and, for lengths, the limit."""
    try:
        params = GenerationParams.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise bad_request(
            "invalid_parameter",
            f"parameter {field!r}: {first['msg']}",
            param=f"parameters.{field}",
        ) from exc
    if "max_new_tokens" not in raw:
        params.max_new_tokens = min(params.max_new_tokens, max_new_tokens)
    if params.max_new_tokens > max_new_tokens:
        raise bad_request(
            "max_new_tokens_too_large",
            f"max_new_tokens {params.max_new_tokens} > this service's limit {max_new_tokens}",
            param="parameters.max_new_tokens",
        )
    return params


class RowSampler:
    """Chooses one row's next token: argmax, or a draw from its own seeded generator."""

    def __init__(self, params: GenerationParams, device: torch.device) -> None:
        self.greedy = params.greedy
        self.temperature = params.effective_temperature
        self.top_p = params.top_p
        self.generator: torch.Generator | None = None
        if not self.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def draw(self, logits: torch.Tensor) -> int:
        """Sample from one row's logits [vocab] (float32) with temperature and nucleus."""
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest head whose mass reaches top_p; the first token always stays.
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            pick = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[pick])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def choose_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """Next token of every row of `logits` [batch, vocab]: one argmax for all greedy rows."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[row] = sampler.draw(logits[row].float())
    return [int(t) for t in tokens]


def find_stop(text: str, stops: list[str], *, start: int = 0) -> int | None:
    """Where the earliest stop string begins in `text[start:]` (absolute index), or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None
